"""Training examples: render with the Prompt spec, tokenize, mask the prompt in the labels.

The answer is followed by what ends it: EOS for a text prompt; for a chat prompt the chat
template's end-of-turn token (ChatML `<|im_end|>`), which is where generation stops.

max_seq_len never shortens an answer silently: truncated and dropped rows are counted
and end up in the training log and metrics.json.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

IGNORE_INDEX = -100  # label value the loss skips


def read_rows(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def render_pairs(rows: list[dict], prompt_spec, chat=None) -> list[tuple[str, str]]:
    """(prompt, response) pairs: the prompt exactly as serving will render it (a chat prompt
    through `chat`, the base model's ChatTemplate)."""
    return [(prompt_spec.render_example(row, chat), row["output"]) for row in rows]


def answer_end_ids(tokenizer, prompt_format: str, model: str) -> list[int]:
    """The token(s) every answer ends with: EOS, or a chat template's end of turn."""
    if prompt_format != "chat":
        return [tokenizer.eos_token_id]
    from ..models.chat import chat_template_of

    return chat_template_of(tokenizer, model).end_ids


def encode_pair(tokenizer, prompt: str, response: str, max_seq_len: int,
                end_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + end (EOS unless `end_ids` says otherwise), and labels
    with the prompt masked.

    Prompt and response are tokenized separately so the boundary is exact (and matches
    serving, which tokenizes the prompt alone); too long examples are cut at max_seq_len
    from the right (the response end is what is lost — encode_examples counts those).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    end_ids = [tokenizer.eos_token_id] if end_ids is None else end_ids
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + end_ids
    input_ids = (prompt_ids + response_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_seq_len]
    return input_ids, labels


@dataclass
class EncodedExamples:
    examples: list[tuple[list[int], list[int]]]
    truncated_rows: int  # kept, but the end of the answer (at least its end token) was cut at max_seq_len
    dropped_rows: int  # the prompt alone fills max_seq_len: no answer token left to learn from

    def summary(self, max_seq_len: int) -> str | None:
        """One line for the training log when max_seq_len changed the data; None when it did not."""
        if not (self.truncated_rows or self.dropped_rows):
            return None
        return (f"max_seq_len {max_seq_len}: {self.truncated_rows} row(s) had the end of the answer cut, "
                f"{self.dropped_rows} dropped (prompt fills the limit); raise training.max_seq_len "
                "or shorten those rows")


def encode_examples(tokenizer, pairs: list[tuple[str, str]], max_seq_len: int,
                    end_ids: list[int] | None = None) -> EncodedExamples:
    """Every pair encoded; rows that lose their whole answer are dropped, and both kinds are counted."""
    end_ids = [tokenizer.eos_token_id] if end_ids is None else end_ids
    examples, truncated, dropped = [], 0, 0
    for prompt, response in pairs:
        input_ids, labels = encode_pair(tokenizer, prompt, response, max_seq_len, end_ids)
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        truncated += labels[-len(end_ids):] != end_ids
        examples.append((input_ids, labels))
    return EncodedExamples(examples, truncated, dropped)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded batch tensors (padding is masked in attention and labels)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def steps_per_epoch(num_examples: int, batch_size: int, world_size: int, accumulation: int) -> int:
    per_step = batch_size * world_size * accumulation
    return max(1, -(-num_examples // per_step))


def batch_indices(step: int, micro: int, num_examples: int, batch_size: int, rank: int, world_size: int,
                  accumulation: int, seed: int) -> list[int]:
    """Example indices of one micro-batch, a pure function of (step, micro, rank).

    Each epoch is a seeded permutation, so a resumed run sees exactly the batches the
    interrupted run would have seen, without saving any sampler state.
    """
    per_epoch = steps_per_epoch(num_examples, batch_size, world_size, accumulation)
    epoch, step_in_epoch = divmod(step, per_epoch)
    order = list(range(num_examples))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    start = ((step_in_epoch * accumulation + micro) * world_size + rank) * batch_size
    chunk = order[start : start + batch_size]
    # The last batch of an epoch wraps around so every batch is full.
    return chunk + order[: batch_size - len(chunk)] if len(chunk) < batch_size else chunk
