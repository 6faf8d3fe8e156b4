"""A model ready for inference: the API evaluation and serving build on.

    load_trained(model_dir)        a TuningJob artifact directory (adapter/ or model/)
    load_base(ref, store_root)     an untuned base model (the evaluation baseline)

`LoadedModel.generate` is batched with left padding, stops each row at EOS (and, for a chat
prompt, at the chat template's end-of-turn token) and refuses empty prompts; `LoadedModel.loss`
scores given responses (prompt tokens masked), for perplexity-style metrics. A model loaded
with a chat prompt (template.json `format: chat`) checks that its tokenizer's chat template
is the one the prompt was tuned through: a tuned model is never served through another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ChatTemplateError, ModelLoadError
from .chat import ChatTemplate, chat_template_of
from .loading import resolve_base
from .tokenizer import ensure_pad_token


LOSS_BATCH = 8  # rows per scoring forward pass


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


def bnb_config(quantization: dict, device: str = "cpu"):
    """BitsAndBytesConfig from the spec's quantization block (as stored in model.json)."""
    import torch
    from transformers import BitsAndBytesConfig

    from .precision import compute_dtype_name

    if quantization["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = compute_dtype_name(quantization.get("compute_dtype", "float32"), device)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.get("type", "nf4"),
        bnb_4bit_use_double_quant=quantization.get("double_quant", True),
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def load_causal_lm(path: Path, quantization: dict | None = None, device: str = "cpu"):
    """A causal LM from a local directory, quantized with bitsandbytes when asked."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quantization:
        kwargs["quantization_config"] = bnb_config(quantization, device)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    return model if quantization else model.to(device)


class PromptedTokenizer:
    """A model version's tokenizer and saved Prompt: how its prompts are rendered and counted,
    without its weights (an engine that runs another format of the same model needs only this)."""

    def __init__(self, tokenizer, version: str, template: dict | None = None) -> None:
        self.tokenizer = ensure_pad_token(tokenizer)  # tuned or base, hub tokenizers may lack one
        self.version = version
        self.template = template
        self.tokenizer.padding_side = "left"  # generation continues each row from its last real token
        self.chat = self._checked_chat_template()
    # prompts -------------------------------------------------------------------
    @property
    def prompt_format(self) -> str | None:
        """"text" or "chat", the format of the prompt template; None without one."""
        return None if self.template is None else (self.template.get("format") or "text")

    def render(self, instruction: str, input: str = "", history: list[dict[str, str]] | None = None,
               context: str = "") -> str:
        """The prompt exactly as the model was tuned on it (template.json of the artifact).
        `history` (a conversation's turns before its last user message, as given) is for chat
        prompts, which take them as training did (PromptSpec.render_example); a text prompt has
        them flattened in `input`. `context` fills {context} (a knowledge base's chunks)."""
        if self.template is None:
            raise ModelLoadError(f"model {self.version} has no prompt template; render prompts yourself")
        from ..specs.prompt import PromptSpec

        example = {"instruction": instruction, "input": input, "history": history, "context": context}
        return PromptSpec.from_saved(self.template).render_example(example, self.chat)

    def use_template(self, template: dict) -> None:
        """Ask this model with another saved Prompt than its own (a grounded deployment's prompt
        with {context}, an evaluation variant's): rendered through the tokenizer's chat template."""
        self.template = template
        self.chat = self._checked_chat_template()

    def _checked_chat_template(self) -> ChatTemplate | None:
        if self.prompt_format != "chat":
            return None
        chat = chat_template_of(self.tokenizer, f"model {self.version}")
        saved = self.template.get("chat_template")
        if saved is not None and saved != chat.text:
            raise ChatTemplateError(f"model {self.version} was tuned through another chat template than its "
                                    "tokenizer has now; re-run its TuningJob (or restore its tokenizer/)")
        return chat

    def stop_ids(self) -> list[int]:
        """Where an answer ends: EOS, and a chat prompt's end-of-turn token."""
        extra = self.chat.end_ids if self.chat else []
        return list(dict.fromkeys([self.tokenizer.eos_token_id, *extra]))

    def _answer_end_ids(self) -> list[int]:
        return self.chat.end_ids if self.chat else [self.tokenizer.eos_token_id]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


class LoadedModel(PromptedTokenizer):
    def __init__(self, model, tokenizer, version: str, template: dict | None = None, device: str = "cpu"):
        super().__init__(tokenizer, version, template)
        self.model = model.eval()
        self.device = device

    # generation ------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Generation]:
        import torch

        if not prompts:
            return []
        stops = self.stop_ids()
        batch = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
        empty = [row for row, length in enumerate(batch["attention_mask"].sum(dim=1).tolist()) if length == 0]
        if empty:
            # An empty sequence crashes bitsandbytes' CPU 4-bit kernel with SIGFPE (the whole
            # process, not an exception), and elsewhere it generates from nothing.
            raise ValueError(f"prompts {empty} are empty: generation needs at least one prompt token")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops if len(stops) > 1 else stops[0],
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        prompt_width = batch["input_ids"].shape[1]
        results = []
        for row, new_tokens in enumerate(output[:, prompt_width:].tolist()):
            end = next((at for at, token in enumerate(new_tokens) if token in stops), None)
            stopped = end is not None
            tokens = new_tokens[:end] if stopped else new_tokens
            results.append(
                Generation(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    prompt_tokens=int(batch["attention_mask"][row].sum()),
                    completion_tokens=len(tokens) + (1 if stopped else 0),
                    finish_reason="stop" if stopped else "length",
                )
            )
        return results

    # scoring -----------------------------------------------------------------------
    def loss(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Mean cross-entropy per example over the response tokens (+ their end token), prompt masked.
        Batched: rows are left-padded (positions from the attention mask) so every response ends at
        the right edge, and logits are computed only there — a vocabulary-wide logit row per prompt
        token would cost more memory than the model itself."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        losses: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), LOSS_BATCH):
                losses += self._batch_loss(prompts[start:start + LOSS_BATCH], responses[start:start + LOSS_BATCH])
        return losses

    def _batch_loss(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch
        import torch.nn.functional as F

        pairs = [(self.encode(p), self.encode(r) + self._answer_end_ids()) for p, r in zip(prompts, responses)]
        width = max(len(p) + len(r) for p, r in pairs)
        keep = max(len(r) for _, r in pairs) + 1  # the logits that predict every row's response tokens
        pad = [width - len(p) - len(r) for p, r in pairs]
        ids = torch.tensor([[self.tokenizer.pad_token_id] * n + p + r for n, (p, r) in zip(pad, pairs)], device=self.device)
        mask = torch.tensor([[0] * n + [1] * (width - n) for n in pad], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        losses = []
        for row, (_, response) in enumerate(pairs):
            # The logit at position t predicts token t + 1: the response's n tokens are predicted by
            # the n kept positions before the last one.
            predicted = logits[row, keep - 1 - len(response): keep - 1].float()
            losses.append(float(F.cross_entropy(predicted, torch.tensor(response, device=self.device))))
        return losses


# loaders ---------------------------------------------------------------------------
def _store_root_of(model_dir: Path) -> Path:
    # Artifacts live at <store>/objects/<fingerprint> (or <store>/staging/<tmp> while being written).
    return model_dir.resolve().parent.parent


def load_trained(model_dir: Path, device: str = "cpu") -> LoadedModel:
    """A TuningJob artifact directory, ready for inference."""
    model_dir = Path(model_dir)
    prompted, meta = _artifact_prompting(model_dir)
    if (model_dir / "model").is_dir():  # method full: complete weights
        model = load_causal_lm(model_dir / "model", device=device)
    else:
        model = _base_with_adapter(model_dir, meta, device)
    return LoadedModel(model, prompted.tokenizer, prompted.version, prompted.template, device)


def load_trained_prompting(model_dir: Path) -> PromptedTokenizer:
    """A TuningJob artifact's tokenizer and Prompt, without its weights."""
    return _artifact_prompting(Path(model_dir))[0]


def _artifact_prompting(model_dir: Path) -> tuple[PromptedTokenizer, dict]:
    from transformers import AutoTokenizer

    try:
        meta = json.loads((model_dir / "model.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir} is not a TuningJob artifact directory: {exc}") from exc
    template_path = model_dir / "template.json"
    template = json.loads(template_path.read_text()) if template_path.is_file() else None
    return PromptedTokenizer(tokenizer, meta["version"], template), meta


def _base_with_adapter(model_dir: Path, meta: dict, device: str):
    from peft import PeftModel

    base_path = Path(meta.get("base_path", ""))
    if not (base_path / "config.json").is_file():
        base_path = resolve_base(meta["base_model"], _store_root_of(model_dir)).path
    # The adapter was trained against the quantized base; inference uses the same weights.
    quantization = meta.get("quantization")
    base = load_causal_lm(base_path, quantization, device)
    try:
        model = PeftModel.from_pretrained(base, model_dir / "adapter")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the adapter in {model_dir / 'adapter'}: {exc}") from exc
    # Over full-precision weights the adapter folds in exactly (W + BA): one matmul per layer
    # instead of three. Folding into 4-bit weights would re-quantize them, so QLoRA keeps it apart.
    return model if quantization else model.merge_and_unload()


def load_base(ref: str, store_root: Path, device: str = "cpu", root: Path | None = None,
              template: dict | None = None) -> LoadedModel:
    """An untuned base model, asked with `template` (a saved Prompt) when given."""
    from transformers import AutoTokenizer

    base = resolve_base(ref, Path(store_root), root)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    return LoadedModel(load_causal_lm(base.path, device=device), tokenizer, f"base:{base.hash[:12]}", template, device)
