"""Run the contenders over the eval examples as one Ray task, and read back raw results.

The task is driven by a detached step (detached.py) named after the Evaluation's fingerprint, so
a killed apply's evaluation goes on and the next apply collects it.

The task loads each model in turn (candidate first, then baselines), so every model sees
the same prompts in the same run; each model, loaded once, answers every suite (the main
eval split, the regression set) it is scored on. Prompts are rendered there, beside the
loaded model, because a chat prompt renders through the model's own chat template. It
returns raw material only — outputs, token counts, latencies, losses; metrics are computed
on the driver (metrics.py), where they are pure.
Ray, torch and transformers are imported inside functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import EvaluationError
from ..project import Project
from ..specs.evaluation import Generation
from ..specs.prompt import PromptSpec
from .answers import AnswerBook, decode_key, loss_key, model_identity
from .contenders import Contender
from .metrics import ModelRun


def load_examples(dataset_dir: Path, limit: int | None) -> list[dict]:
    """The eval split (first `limit` rows): instruction, input, output."""
    path = dataset_dir / "eval.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read the eval split {path}: {exc}") from exc
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise EvaluationError(f"{path}: row {index + 1} lacks string 'instruction'/'output'")
    return rows[:limit] if limit else rows


def render(template: dict, example: dict, chat=None) -> str:
    """The prompt for one example; the same rendering the Prompt kind defines (a chat prompt
    through `chat`, the loaded model's ChatTemplate)."""
    return PromptSpec.from_saved(template).render_example(example, chat)


@dataclass(frozen=True)
class Suite:
    """One set of examples and the contenders (by role) scored on it."""

    name: str  # main | regression
    examples: list[dict]
    roles: list[str]
    losses: bool = True  # score the expected answers too (only eval_loss and perplexity need it)


def run_on_cluster(
    project: Project,
    store_root: Path,
    contenders: list[Contender],
    suites: list[Suite],
    generation: Generation,
    repeats: int,
    gpus: float,
    cpus: int,
    run_name: str,
    answers_dir: Path | None = None,
    reuse_answers: bool = True,
    report: Callable[[str], None] = print,
    store_url: str | None = None,
) -> dict[str, dict[str, list[ModelRun]]]:
    """suite -> role -> one ModelRun per repeat. Raises EvaluationError when the task fails.
    `store_url` names the store the same on every machine (`store_root` may be a local cache of it)."""
    from ..detached import run_detached
    from ..raycluster import check_fits, connect

    connect(project)
    local = project.ray_address() is None
    questions = {s.name: {"roles": s.roles, "losses": s.losses, "examples": [question(e) for e in s.examples]}
                 for s in suites}
    expected = {s.name: [e["output"] for e in s.examples] for s in suites}
    jobs = [asdict(c) for c in contenders]
    args = (jobs, questions, expected, generation.model_dump(), repeats, gpus > 0, str(store_root), cpus,
            str(answers_dir) if answers_dir else None, reuse_answers)
    # Detached (detached.py): a killed apply's evaluation goes on, and the next apply collects it.
    raw = run_detached(
        f"evaluate-{run_name}", store_url or str(store_root), "llmops_engine.evaluation.runner:drive",
        (cpus, gpus, args), report=report, error=EvaluationError, what="evaluation task", outlive_interrupt=not local,
        before_start=lambda: check_fits({"CPU": cpus, "GPU": gpus}, "the evaluation task", local,
                                        "Lower the Evaluation's cpus"))
    return {
        suite: {role: [ModelRun(**r) for r in runs] for role, runs in by_suite.items()}
        for suite, by_suite in raw.items()
    }


def drive(cpus: int, gpus: float, args: tuple, emit) -> dict:
    """In the detached step's actor: the scoring task, with the resources it asks for."""
    import ray

    task = ray.remote(score_contenders).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    return ray.get(task.remote(*args))


def question(example: dict) -> dict:
    return {"instruction": example["instruction"], "input": example.get("input") or ""}


# --- on the Ray worker --------------------------------------------------------------------
def score_contenders(
    jobs: list[dict],
    questions: dict[str, dict],
    expected: dict[str, list[str]],
    generation: dict,
    repeats: int,
    use_gpu: bool,
    store_root: str,
    cpus: int = 1,
    answers_dir: str | None = None,
    reuse_answers: bool = True,
) -> dict[str, dict[str, list[dict]]]:
    """suite -> role -> one raw run per repeat; `questions` is suite -> {roles, examples}.
    With `answers_dir`, new answers are kept there and, with `reuse_answers`, earlier ones
    reused (answers.py)."""
    import torch

    # Ray's OMP_NUM_THREADS reaches only a fresh worker, and a reused one keeps the torch threads it
    # started with, so a 2-CPU task could generate on one thread.
    torch.set_num_threads(cpus)
    device = "cuda" if use_gpu else "cpu"
    results: dict[str, dict[str, list[dict]]] = {suite: {} for suite in questions}
    for job in jobs:
        contender = Contender(**job)
        model = _load(contender, device, Path(store_root))
        retriever = open_retriever(contender)
        book = _book(answers_dir, reuse_answers, model, contender)
        for suite, asked in questions.items():
            if contender.role in asked["roles"]:
                examples, sources = grounded(asked["examples"], retriever, contender.knowledge)
                prompts = [render(contender.template, example, model.chat) for example in examples]
                runs = _runs(model, prompts, expected[suite], generation, repeats, asked["losses"], book, cpus)
                results[suite][contender.role] = [{**run, "sources": sources} for run in runs]
        if book:
            book.save()
        del model  # one model in memory at a time
    return results


def _book(answers_dir: str | None, reuse: bool, model, contender: Contender) -> AnswerBook | None:
    if not answers_dir:
        return None
    return AnswerBook(Path(answers_dir), model_identity(model.version, contender.model_dir), reuse)


def open_retriever(contender: Contender):
    if contender.knowledge is None:
        return None
    from ..knowledge.index import Index
    from ..state.stores import object_on_this_node

    where = contender.knowledge
    return Index.open(object_on_this_node(where.get("store_url"), where["fingerprint"], where["path"]))


def grounded(examples: list[dict], retriever, knowledge: dict | None) -> tuple[list[dict], list[list[str]] | None]:
    """Each example with the chunks retrieved for its question as `context` (as a grounded
    deployment's slot does per request), and the retrieved chunk ids per example."""
    if retriever is None:
        return examples, None
    from ..knowledge.grounding import context_of

    grounded, sources = [], []
    for example in examples:
        hits = retriever.search(example["instruction"], knowledge["top_k"], knowledge["mode"])
        grounded.append({**example, "context": context_of(hits)})
        sources.append([hit.id for hit in hits])
    return grounded, sources


def _runs(model, prompts: list[str], expected: list[str], generation: dict, repeats: int, losses: bool,
          book: AnswerBook | None = None, threads: int = 1) -> list[dict]:
    # Batches of similar length pad less: 32 RAG prompts of 284–357 tokens decoded 13 % faster
    # sorted (BENCHMARKS.md). Results go back to the examples' order.
    order = sorted(range(len(prompts)), key=lambda at: len(prompts[at]))
    prompts, expected = [prompts[at] for at in order], [expected[at] for at in order]
    scored = _losses(model, prompts, expected, generation["batch_size"], book) if losses else None
    runs = [
        {**_decode(model, prompts, generation, generation["seed"] + repeat, book, threads), "losses": scored}
        for repeat in range(repeats)
    ]
    return [{field: _unsorted(values, order) if isinstance(values, list) else values for field, values in run.items()}
            for run in runs]


def _unsorted(values: list, order: list[int]) -> list:
    restored = [None] * len(values)
    for position, at in enumerate(order):
        restored[at] = values[position]
    return restored


def _load(contender: Contender, device: str, store_root: Path):
    from ..models import load_base, load_trained
    from ..state.stores import object_on_this_node

    if contender.model_dir is None:
        return load_base(contender.base_ref, store_root, device=device, template=contender.template)
    model = load_trained(object_on_this_node(contender.store_url, contender.label, contender.model_dir), device=device)
    model.use_template(contender.template)  # a variant may ask a tuned model with another Prompt
    return model


def _decode(model, prompts: list[str], generation: dict, seed: int, book: AnswerBook | None = None,
            threads: int = 1) -> dict:
    """Batched decoding of the prompts the book has no answer for; each example's latency is the
    wall time of the call that answered it (then or when the book's answer was decoded)."""
    settings = dict(
        max_new_tokens=generation["max_new_tokens"],
        do_sample=generation["do_sample"],
        temperature=generation["temperature"],
        top_p=generation["top_p"],
        seed=seed,
    )
    keys = [decode_key(book.identity, model.device, threads, generation, p) if book else None for p in prompts]
    answers: list[dict | None] = [book.answer(key) if book else None for key in keys]
    missing = [at for at, answer in enumerate(answers) if answer is None]
    if missing:
        model.generate(prompts[missing[0]:missing[0] + 1], **{**settings, "max_new_tokens": 1})  # warm-up, not timed
    size = generation["batch_size"]
    for start in range(0, len(missing), size):
        batch = missing[start : start + size]
        began = time.perf_counter()
        generated = model.generate([prompts[at] for at in batch], **settings)
        elapsed_ms = (time.perf_counter() - began) * 1000
        for at, answer in zip(batch, generated):
            answers[at] = {"output": answer.text, "tokens": answer.completion_tokens, "latency_ms": elapsed_ms}
            if book:
                book.put(keys[at], answers[at])
    return {"outputs": [a["output"] for a in answers], "output_tokens": [a["tokens"] for a in answers],
            "latencies_ms": [a["latency_ms"] for a in answers], "reused": len(prompts) - len(missing)}


def _losses(model, prompts: list[str], expected: list[str], size: int, book: AnswerBook | None = None) -> list[float]:
    keys = [loss_key(book.identity, model.device, p, e) if book else None for p, e in zip(prompts, expected)]
    losses: list[float | None] = [book.loss(key) if book else None for key in keys]
    missing = [at for at, loss in enumerate(losses) if loss is None]
    for start in range(0, len(missing), size):
        batch = missing[start : start + size]
        for at, loss in zip(batch, model.loss([prompts[at] for at in batch], [expected[at] for at in batch])):
            losses[at] = float(loss)
            if book:
                book.put(keys[at], {"loss": losses[at]})
    return losses
