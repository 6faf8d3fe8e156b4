"""Training overhead of the engine vs a plain transformers + peft loop.

Same base model, data (the demo's support tickets), prompt and LoRA/QLoRA settings as the
demo's specs (SmolLM2-135M-Instruct, chat prompt), same number of steps, in one process:

  (a) engine: TuningController.apply -> local Ray head -> Ray Train TorchTrainer worker
  (b) plain:  a hand-written loop (LoraConfig + AdamW, and BitsAndBytesConfig +
              prepare_model_for_kbit_training for QLoRA), no Ray, same torch thread count as the
              Ray worker

Prints the steady-state step-time ratio (median step, engine / plain; goal <= 1.05) and the
end-to-end overhead in seconds (engine apply wall time - plain load+train+save time).

    python bench/train_bench.py [--steps 40] [--batch-size 16]
    python bench/train_bench.py --gpu     # CUDA only: 8B-shaped random-init Llama under QLoRA

Run it on an otherwise idle machine; numbers from a loaded machine are meaningless.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_demo(limit: int | None = None) -> tuple[list[dict], dict, dict]:
    import yaml

    from llmops_engine.data.demo import generate  # the demo's raw data, as data.dvc records it

    rows = generate()
    rows = [{"instruction": r["question"], "input": r.get("context") or "", "output": r["answer"]} for r in rows]
    random.Random(42).shuffle(rows)
    prompt = yaml.safe_load((REPO / "specs/prompt.yaml").read_text())
    tuning = yaml.safe_load((REPO / "specs/tuning.yaml").read_text())
    return rows[:limit], prompt, tuning


# (a) the engine ---------------------------------------------------------------------------
def engine_run(work: Path, rows: list[dict], prompt_doc: dict, tuning_doc: dict, training: dict) -> dict:
    from llmops_engine.controllers.base import ApplyContext
    from llmops_engine.controllers.tuning import TuningController
    from llmops_engine.project import Project, ProjectSettings
    from llmops_engine.specs import KINDS, Metadata
    from llmops_engine.specs.resource import Resource
    from llmops_engine.state.stores import open_store

    project = Project(work, ProjectSettings())
    store = open_store(project)
    prompt = Resource("Prompt", Metadata(name="support-answer"), KINDS["Prompt"].model_validate(prompt_doc["spec"]), "b", 1)
    spec = {**tuning_doc["spec"], "training": {**tuning_doc["spec"]["training"], **training}}
    tune = Resource("TuningJob", Metadata(name="bench"), KINDS["TuningJob"].model_validate(spec), "b", 1)
    dataset_fp = hashlib.sha256(b"bench-dataset").hexdigest()
    tune_fp = hashlib.sha256(json.dumps([tune.normalized_spec(), time.time()]).encode()).hexdigest()
    dataset_dir = store.local_path(dataset_fp)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = ApplyContext(project, store, {prompt.key: prompt, tune.key: tune},
                       {"Dataset/support-tickets": dataset_fp, prompt.key: "0" * 64, tune.key: tune_fp}, {},
                       report=_report)
    from llmops_engine import raycluster

    raycluster.ensure_cluster(project)  # cluster start is a one-time cost, not per-run overhead
    staging = store.staging_dir(tune_fp)
    started = time.perf_counter()
    TuningController().apply(tune, ctx, staging)
    wall = time.perf_counter() - started
    metrics = json.loads((staging / "metrics.json").read_text())
    raycluster.stop_local(project)
    return {"wall": wall, "median_step": metrics["median_step_seconds"], "final_loss": metrics["final_loss"],
            "threads": _reported_threads()}


_threads: list[int] = []


def _report(line: str) -> None:
    print("   ", line, flush=True)
    found = re.search(r"(\d+) torch threads", line)
    if found:
        _threads.append(int(found.group(1)))


def _reported_threads() -> int | None:
    return _threads[0] if _threads else None


# (b) the plain loop ------------------------------------------------------------------------
def plain_run(work: Path, rows: list[dict], prompt_doc: dict, tuning_doc: dict, training: dict, threads: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, get_scheduler

    from llmops_engine.models import resolve_base

    torch.set_num_threads(threads)
    spec = tuning_doc["spec"]
    train = {**spec["training"], **training}
    quant, lora = spec.get("quantization"), spec["lora"]
    base = resolve_base(spec["base_model"], work / "plain-store")  # materialize outside the timing
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    prompt = prompt_doc["spec"]
    examples = []
    for row in rows:
        text = (prompt["template"] if row["input"] or not prompt.get("template_no_input") else prompt["template_no_input"])
        text = text.format(**row)
        if prompt.get("format") == "chat":  # what a hand-written loop does: the tokenizer's chat template
            system = [{"role": "system", "content": prompt["system"]}] if prompt.get("system") else []
            text = tokenizer.apply_chat_template(system + [{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[: train["max_seq_len"]]
        examples.append((ids, ([-100] * len(prompt_ids) + answer_ids)[: train["max_seq_len"]]))

    quantization = {} if not quant else {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant["type"], bnb_4bit_use_double_quant=quant["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, quant["compute_dtype"]))}
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32, device_map={"": "cpu"}, **quantization)
    if quant:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], modules_to_save=lora.get("modules_to_save"), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train["learning_rate"])
    steps = train["max_steps"]
    scheduler = get_scheduler(train.get("lr_scheduler", "linear"), optimizer, 0, steps)
    from llmops_engine.training.data import batch_indices  # the same batches as the engine, so equal work

    step_times, loss = [], None
    for step in range(steps):
        step_started = time.perf_counter()
        chosen = [examples[i] for i in batch_indices(step, 0, len(examples), train["batch_size"], 0, 1, 1, train["seed"])]
        width = max(len(ids) for ids, _ in chosen)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chosen])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chosen])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - step_started)
    model.save_pretrained(work / "plain-adapter")
    return {"wall": time.perf_counter() - started, "median_step": statistics.median(step_times),
            "final_loss": float(loss)}


# --gpu: an 8B-shaped model under QLoRA -------------------------------------------------------
def gpu_run(steps: int, batch_size: int, seq_len: int) -> None:
    """Random-init Llama-3-8B shape (no download), 4-bit NF4 + LoRA r=16, tokens/s and peak memory."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device")
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    with tempfile.TemporaryDirectory(prefix="bench-8b-") as tmp:
        torch.manual_seed(0)
        with torch.device("cuda"):
            LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        torch.cuda.empty_cache()
        model = AutoModelForCausalLM.from_pretrained(tmp, device_map={"": 0}, dtype=torch.bfloat16,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    torch.cuda.reset_peak_memory_stats()
    batch = torch.randint(0, config.vocab_size, (batch_size, seq_len), device="cuda")
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    steady = statistics.median(times[2:] or times)
    print(f"8B-shaped QLoRA on {torch.cuda.get_device_name()}: {batch_size * seq_len / steady:.0f} tokens/s, "
          f"median step {steady:.3f}s, peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=None, help="use only the first N demo rows")
    parser.add_argument("--gpu", action="store_true", help="also run the 8B-shaped QLoRA bench (CUDA)")
    args = parser.parse_args()

    rows, prompt_doc, tuning_doc = load_demo(args.rows)
    training = {"max_steps": args.steps, "batch_size": args.batch_size, "save_every_steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        print(f"(a) engine: TuningController -> Ray Train, {args.steps} steps x batch {args.batch_size}", flush=True)
        engine = engine_run(work / "engine", rows, prompt_doc, tuning_doc, training)
        threads = engine["threads"] or tuning_doc["spec"].get("resources", {}).get("cpus_per_worker", 1)
        print(f"(b) plain transformers + peft loop, {threads} torch threads", flush=True)
        plain = plain_run(work, rows, prompt_doc, tuning_doc, training, int(threads))

    ratio = engine["median_step"] / plain["median_step"]
    print(json.dumps({"engine": engine, "plain": plain}, indent=2))
    print(f"steady-state step time: engine {engine['median_step']:.3f}s, plain {plain['median_step']:.3f}s, "
          f"ratio {ratio:.3f} (goal <= 1.05)")
    print(f"end-to-end: engine {engine['wall']:.1f}s, plain {plain['wall']:.1f}s, "
          f"overhead {engine['wall'] - plain['wall']:.1f}s (Ray Train worker start, checkpoints, artifacts)")
    if args.gpu:
        gpu_run(steps=10, batch_size=4, seq_len=1024)


if __name__ == "__main__":
    main()
