"""What an Evaluation's scoring costs, and what batching by length and answer reuse save.

The demo's RAG prompts (the help center's chunks retrieved for each retrieval question, hybrid
top-k, the `support-rag` chat prompt) asked of the untuned base model, decoded three ways in one
run through the engine's own scoring function (`evaluation.runner._runs`):

1. in the questions' order, batch after batch (what the engine did before),
2. length-sorted batches (what it does now), checked to give the same answers,
3. a second evaluation of all the questions after a first one asked a subset (`--subset`):
   the answer book holds those, so only the rest is decoded.

    python bench/eval_bench.py [--model builtin:smollm2-135m-instruct] [--questions 32] [--subset 16]
                               [--batch-size 16] [--max-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmops_engine.evaluation import runner
from llmops_engine.evaluation.answers import AnswerBook
from llmops_engine.knowledge.chunking import chunk_document
from llmops_engine.knowledge.documents import read_documents
from llmops_engine.knowledge.embedders import load_embedder
from llmops_engine.knowledge.grounding import context_of
from llmops_engine.knowledge.index import Index, build_index
from llmops_engine.models import load_base
from llmops_engine.project import load_project
from llmops_engine.specs.loader import load_resources


def rag_examples(root: Path, out: Path, count: int, top_k: int) -> list[dict]:
    documents = read_documents(root, "kb/*.md")
    build_index(out, [c for d in documents for c in chunk_document(d, 600, 80)], load_embedder("builtin:wordllama-256"))
    index = Index.open(out)
    questions = [json.loads(line)["question"] for line in (root / "kb" / "queries.jsonl").read_text().splitlines()]
    return [{"instruction": q, "input": "", "context": context_of(index.search(q, top_k, "hybrid"))}
            for q in (questions * 2)[:count]]


def timed(label: str, work) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    runs = work()
    elapsed = time.perf_counter() - started
    print(f"{label:<52} {elapsed:7.2f} s")
    return elapsed, runs


def in_order(model, prompts: list[str], generation: dict) -> list[dict]:
    """The engine's scoring before length sorting: the examples' own order, batch after batch."""
    return [runner._decode(model, prompts, generation, generation["seed"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--subset", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(__file__).resolve().parent.parent
    project = load_project(root)
    prompt = next(r.spec for r in load_resources(root, ["specs"]) if r.key == "Prompt/support-rag")
    generation = {"max_new_tokens": args.max_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                  "seed": 0, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as scratch:
        examples = rag_examples(root, Path(scratch) / "index", args.questions, args.top_k)
        model = load_base(args.model, project.state_dir / "store", template=prompt.saved())
        prompts = [runner.render(prompt.saved(), e, model.chat) for e in examples]
        lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
        print(f"{len(prompts)} RAG prompts of {min(lengths)}–{max(lengths)} tokens, batch {args.batch_size}, "
              f"{args.max_tokens} new tokens, {args.threads} threads, {args.model}")
        model.generate(prompts[:1], max_new_tokens=1)  # load kernels before anything is timed
        plain, [unsorted] = timed("1. examples' order", lambda: in_order(model, prompts, generation))
        ordered, [by_length] = timed("2. length-sorted batches", lambda: runner._runs(model, prompts, [""] * len(prompts), generation, 1, False))
        same = sum(a == b for a, b in zip(unsorted["outputs"], by_length["outputs"]))
        book_dir = Path(scratch) / "answers"
        first = AnswerBook(book_dir, model.version)
        subset = prompts[: args.subset]
        timed(f"   (a first evaluation asks {len(subset)} of them)",
              lambda: runner._runs(model, subset, [""] * len(subset), generation, 1, False, first, args.threads))
        first.save()
        book = AnswerBook(book_dir, model.version)
        reused, [second] = timed("3. all of them after that, with the answer book",
                                 lambda: runner._runs(model, prompts, [""] * len(prompts), generation, 1, False, book, args.threads))
        print(f"\nlength-sorted vs examples' order: {plain / ordered:.2f}x faster, same answers {same}/{len(prompts)}")
        print(f"with {second['reused']} of {len(prompts)} answers in the book: {ordered / reused:.2f}x faster "
              f"than decoding all, same answers {sum(a == b for a, b in zip(by_length['outputs'], second['outputs']))}/{len(prompts)}")


if __name__ == "__main__":
    sys.exit(main())
