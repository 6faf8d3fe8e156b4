"""engine: vllm — its decisions (sampling settings, the Ray Serve LLM config, where it may run)
and its reading of vLLM's stream, checked here; and one real run on a GPU, which needs vLLM,
a GPU and a merged export (LLMOPS_VLLM_TEST_MODEL) and is skipped, saying which is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmops_engine.errors import EngineError, ModelLoadError
from llmops_engine.serving.engines.vllm import (
    VLLM_MISSING,
    CompletionChunks,
    VllmEngine,
    completion_request,
    llm_config_for,
    relay,
    slot_deployment_options,
    vllm_problem,
)

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
TEST_MODEL = os.environ.get("LLMOPS_VLLM_TEST_MODEL")

GREEDY = {"max_new_tokens": 16, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}


# sampling settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, sampling", [
    (GREEDY, {"temperature": 0.0, "top_p": 1.0}),
    ({**GREEDY, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 3},
     {"temperature": 0.7, "top_p": 0.9, "seed": 3}),
    ({**GREEDY, "do_sample": True, "temperature": 0.0, "seed": 3}, {"temperature": 0.0, "top_p": 1.0}),
    ({**GREEDY, "do_sample": False, "temperature": 0.7, "top_p": 0.5}, {"temperature": 0.0, "top_p": 1.0}),
], ids=["greedy", "sampled", "zero-temperature-is-greedy", "settings-ignored-when-greedy"])
def test_sampling_settings_follow_the_slots_params(params, sampling):
    request = completion_request("m", "Q: hi\nA:", params, [], [])
    shaped = {key: request.get(key) for key in ("temperature", "top_p", "seed")}
    assert shaped == {"seed": None, **sampling}
    # Only temperature and top_p shape sampling, as on the transformers engine.
    assert (request["top_k"], request["min_p"], request["repetition_penalty"]) == (0, 0.0, 1.0)
    assert (request["presence_penalty"], request["frequency_penalty"]) == (0.0, 0.0)


def test_the_request_streams_the_rendered_prompt_with_its_stops_and_usage():
    request = completion_request("smol", "<|im_start|>user\nhi<|im_end|>\n", {**GREEDY, "max_new_tokens": 9},
                                 ["\nQ:", "", "###"], [2])
    assert request["model"] == "smol" and request["prompt"] == "<|im_start|>user\nhi<|im_end|>\n"
    assert request["max_tokens"] == 9
    assert request["stop"] == ["\nQ:", "###"]  # an empty stop string would end every answer at once
    assert request["stop_token_ids"] == [2]
    assert request["add_special_tokens"] is False  # the template wrote any BOS already
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    json.dumps(request)  # plain data: it becomes a CompletionRequest in the replica


# the Ray Serve LLM config -------------------------------------------------------------------------

def test_llm_config_serves_the_merged_export_under_its_model_id(tmp_path):
    config = llm_config_for(tmp_path / "merged", "tuned-v3", 2048)
    assert config == {
        "model_loading_config": {"model_id": "tuned-v3", "model_source": str(tmp_path / "merged")},
        "engine_kwargs": {"max_model_len": 2048, "gpu_memory_utilization": 0.9},
        "experimental_configs": {"stream_batching_interval_ms": 0},
    }
    overridden = llm_config_for(tmp_path, "m", 512, gpu_memory_utilization=0.5,
                                engine_kwargs={"enforce_eager": True, "max_model_len": 256})
    assert overridden["engine_kwargs"] == {"max_model_len": 256, "gpu_memory_utilization": 0.5, "enforce_eager": True}


def test_llm_config_makes_a_relative_export_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = llm_config_for(Path("merged"), "m", 64)["model_loading_config"]["model_source"]
    assert source == str(tmp_path / "merged")  # a relative path would be read as a model hub id


def test_llm_config_refuses_a_context_without_room():
    with pytest.raises(ValueError, match="max_model_len"):
        llm_config_for(Path("/m"), "m", 0)


@pytest.mark.slow  # imports Ray's LLM config models (torch, transformers): ~4 s
def test_ray_2_60s_llm_config_accepts_the_config(tmp_path):
    # ray.serve.llm.LLMConfig cannot be imported without vLLM; it subclasses this model unchanged.
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    config = LLMConfig(**llm_config_for(tmp_path, "tuned-v3", 1024, engine_kwargs={"enforce_eager": True}))
    assert config.model_id == "tuned-v3"
    assert config.model_loading_config.model_source == str(tmp_path)
    assert config.max_request_context_length == 1024
    assert config.experimental_configs == {"stream_batching_interval_ms": 0}
    assert config.accelerator_config.kind == "gpu"
    assert config.llm_engine == "vLLM"


# where it may run ---------------------------------------------------------------------------------

@pytest.mark.parametrize("resources, installed, problem", [
    ({"CPU": 2.0, "memory": 2e10}, True, "needs a GPU; this Ray cluster has none (2 CPUs)"),
    ({"CPU": 16.0, "GPU": 0.0}, True, "needs a GPU; this Ray cluster has none (16 CPUs)"),
    ({}, False, "needs a GPU; this Ray cluster has none (0 CPUs)"),
    ({"CPU": 16.0, "GPU": 1.0}, False, VLLM_MISSING),
    ({"CPU": 16.0, "GPU": 1.0}, True, None),
    ({"CPU": 64.0, "GPU": 8.0}, True, None),
], ids=["cpu-only", "gpu-zero", "empty", "gpu-without-vllm", "gpu-with-vllm", "many-gpus"])
def test_vllm_problem(resources, installed, problem):
    found = vllm_problem(resources, vllm_installed=installed)
    if problem is None or problem == VLLM_MISSING:
        assert found == problem
    else:
        assert problem in found


def test_vllm_problem_looks_for_vllm_where_llmops_runs():
    assert vllm_problem({"GPU": 1.0}) == (None if VLLM_INSTALLED else VLLM_MISSING)
    assert "engine: transformers" in vllm_problem({"CPU": 2.0})  # says what to do instead


def test_a_vllm_slot_leaves_the_gpu_to_vllms_worker_in_its_placement_group():
    from ray import serve
    from ray.llm._internal.serve.core.configs.accelerators import GPUAccelerator

    options = slot_deployment_options(replica_cpus=2)
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    # Ray's engine bundle (one GPU) with the replica's own CPUs merged into it, as LLMServer does.
    (engine_bundle,) = GPUAccelerator().default_bundles(num_devices=1)
    assert options["placement_group_bundles"] == [{"CPU": 2, **engine_bundle}]

    @serve.deployment
    class Slot:
        pass

    deployment = Slot.options(**options)  # Serve checks the replica fits in the first bundle
    assert deployment.ray_actor_options["num_gpus"] == 0


# reading vLLM's stream ------------------------------------------------------------------------------

def _chunk(text: str, finish: str | None = None) -> str:
    # vLLM 0.29's CompletionStreamResponse, as completion_stream_generator writes it.
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
    return "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [choice]}) + "\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> str:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                                  "choices": [], "usage": usage}) + "\n\n"


DONE = "data: [DONE]\n\n"


async def _items(items: list, closed: list | None = None, fail: Exception | None = None):
    try:
        for item in items:
            yield item
        if fail is not None:
            raise fail
    finally:
        if closed is not None:
            closed.append(True)


def _collect(items: list, **kwargs) -> list[dict]:
    async def main():
        return [event async for event in relay(_items(items, **kwargs))]

    return asyncio.run(main())


@pytest.mark.parametrize("items", [
    [[_chunk("Hel")], [_chunk("lo")], [_chunk(" there", "stop")], [_usage(5, 3)], [DONE]],
    [[_chunk("Hel"), _chunk("lo")], [_chunk(" there", "stop") + _usage(5, 3) + DONE]],  # batched by LLMServer
    [_chunk("Hel"), _chunk("lo"), _chunk(" there"), _chunk("", "stop"), _usage(5, 3), DONE],  # not in lists
], ids=["one-per-item", "batched", "bare-strings"])
def test_text_streams_as_it_arrives_and_the_answer_ends_with_its_counts(items):
    events = _collect(items)
    assert [e["text"] for e in events[:-1]] == ["Hel", "lo", " there"]
    assert events[-1] == {"done": {"text": "Hello there", "prompt_tokens": 5, "completion_tokens": 3,
                                   "finish_reason": "stop"}}


def test_an_answer_cut_at_max_tokens_finishes_with_length():
    events = _collect([[_chunk("a b c", "length")], [_usage(4, 16)], [DONE]])
    assert events[-1]["done"]["finish_reason"] == "length"


@pytest.mark.parametrize("items, message", [
    ([[SimpleNamespace(error=SimpleNamespace(message="This model's maximum context length is 512 tokens",
                                             code=400))]],
     "refused the request: This model's maximum context length is 512"),
    ([[_chunk("Hel")], ['data: {"error": {"message": "EngineCore died", "type": "InternalServerError"}}\n\n']],
     "failed while generating: EngineCore died"),
    ([[_chunk("Hel")], [DONE]], "without finishing it (finish_reason None)"),
    ([[_chunk("Hel", "abort")], [_usage(1, 1)], [DONE]], "finish_reason 'abort'"),
    ([[_chunk("Hel", "stop")], [DONE]], "without its token counts"),
    ([["data: {not json\n\n"]], "JSONDecodeError"),
], ids=["refused", "error-mid-stream", "no-finish", "aborted", "no-usage", "garbled"])
def test_what_vllm_reports_as_failed_is_an_engine_error(items, message):
    with pytest.raises(EngineError, match=re.escape(message)):
        _collect(items)


def test_an_exception_from_the_stream_is_translated_and_keeps_its_cause():
    with pytest.raises(EngineError, match="RuntimeError: engine loop stopped") as failed:
        _collect([[_chunk("Hel")]], fail=RuntimeError("engine loop stopped"))
    assert isinstance(failed.value.__cause__, RuntimeError)


def test_closing_the_stream_early_closes_vllms_stream():
    closed: list = []

    async def main():
        events = relay(_items([[_chunk("Hel")], [_chunk("lo")], [_chunk("!", "stop")], [_usage(1, 3)]], closed))
        first = await events.__anext__()
        await events.aclose()  # the client went away after the first token
        return first, list(closed)  # closed at once, not whenever the dropped stream is collected

    assert asyncio.run(main()) == ({"text": "Hel"}, [True])


def test_the_chunk_reader_keeps_the_whole_answer():
    reader = CompletionChunks()
    assert reader.feed([_chunk("a"), _chunk("")]) == [{"text": "a"}]  # an empty delta is no event
    assert reader.feed(_chunk("b", "stop") + _usage(2, 2)) == [{"text": "b"}]
    assert reader.done()["done"]["text"] == "ab"


# the engine itself -----------------------------------------------------------------------------------

@pytest.mark.skipif(VLLM_INSTALLED, reason="vllm is installed here: the missing-package error cannot show")
def test_opening_the_engine_without_vllm_says_how_to_get_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"pip install 'ray\[llm\]'"):
        asyncio.run(VllmEngine.open(tmp_path, "m", 256))


def test_opening_the_engine_on_a_directory_without_a_merged_export_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="no merged export"):
        asyncio.run(VllmEngine.open(tmp_path, "m", 256))


def _why_no_gpu_run() -> str | None:
    if not VLLM_INSTALLED:
        return "vllm is not installed (engine: vllm needs pip install 'ray[llm]' and a GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU here (engine: vllm needs one)"
    if not TEST_MODEL or not (Path(TEST_MODEL) / "config.json").is_file():
        return "set LLMOPS_VLLM_TEST_MODEL to a TuningJob's merged/ export directory"
    return None


WHY_NO_GPU_RUN = _why_no_gpu_run()


@pytest.mark.slow
@pytest.mark.skipif(WHY_NO_GPU_RUN is not None, reason=WHY_NO_GPU_RUN or "")
def test_vllm_streams_a_greedy_answer_on_a_gpu(ray_project):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    assert vllm_problem(ray.cluster_resources()) is None
    # Placed as a slot replica is: in a placement group holding the GPU, asking for no GPU itself.
    options = slot_deployment_options()
    group = placement_group(options["placement_group_bundles"], strategy=options["placement_group_strategy"])
    ray.get(group.ready(), timeout=120)
    prompt = "Q: What is the capital of France?\nA:"

    @ray.remote
    class Replica:
        async def run(self, model_dir: str):
            async def answer(engine, params, stops):
                return [event async for event in engine.stream(prompt, params, stops)]

            engine = await VllmEngine.open(model_dir, "vllm-test", 512, gpu_memory_utilization=0.5,
                                           engine_kwargs={"enforce_eager": True})
            try:
                events = await answer(engine, GREEDY, [])
                again = await answer(engine, GREEDY, [])
                text = events[-1]["done"]["text"]
                cut = None
                if len(text) > 6:  # stop at a piece of the greedy answer: the answer ends before it
                    cut = (await answer(engine, GREEDY, [text[3:6]]))[-1]["done"], text[:text.index(text[3:6])]
                abandoned = engine.stream(prompt, {**GREEDY, "max_new_tokens": 400}, [])
                await abandoned.__anext__()
                await abandoned.aclose()  # the client left after the first token
                client = engine.server.engine._engine_client
                deadline = time.monotonic() + 10
                while client.output_processor.get_num_unfinished_requests() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                unfinished = client.output_processor.get_num_unfinished_requests()
                return engine.count_tokens(prompt), events, again, cut, unfinished
            finally:
                engine.close()

    replica = Replica.options(num_cpus=options["ray_actor_options"]["num_cpus"], num_gpus=0,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(
                                  group, placement_group_capture_child_tasks=True)).remote()
    try:
        prompt_tokens, events, again, cut, unfinished = ray.get(replica.run.remote(TEST_MODEL), timeout=900)
    finally:
        ray.kill(replica)
        remove_placement_group(group)
    done = events[-1]["done"]
    assert len(events) >= 2 and all(set(e) == {"text"} for e in events[:-1])
    assert "".join(e["text"] for e in events[:-1]) == done["text"]
    assert done["prompt_tokens"] == prompt_tokens
    assert 1 <= done["completion_tokens"] <= GREEDY["max_new_tokens"]
    assert done["finish_reason"] in ("stop", "length")
    assert again[-1]["done"]["text"] == done["text"]  # greedy: the same answer twice
    if cut is not None:
        assert cut[0]["text"] == cut[1] and cut[0]["finish_reason"] == "stop"
    assert unfinished == 0  # closing the stream aborted the request in vLLM
