"""A Deployment's `engine` and the export it runs: each mistake reported at its file:line at validate time."""

import pytest

from llmops_engine.errors import SpecError
from llmops_engine.specs.loader import load_resources
from tests.test_loader_errors import BASE, DEPLOYMENT, TUNING, _assert_located, _project_with_data
from tests.test_provider_specs import GOOD_PROVIDER, PROVIDED

CASES = [
    # (case, text, line, path, message fragment)
    ("llama-cpp-without-gguf-export", DEPLOYMENT.format(name="dep", extra="  engine: llama-cpp\n"), 9, "spec.engine",
     "engine llama-cpp runs the gguf export, and TuningJob 't' exports adapter: add gguf to its export"),
    ("vllm-without-merged-export", DEPLOYMENT.format(name="dep", extra="  engine: vllm\n"), 9, "spec.engine",
     "engine vllm runs the merged export"),
    ("llama-cpp-on-a-model-without-gguf", DEPLOYMENT.format(name="dep", extra="  engine: llama-cpp\n").replace(
        "model: t", "model: builtin:tiny-llama"), 9, "spec.engine", "runs GGUF files and 'builtin:tiny-llama' is not one"),
    ("engine-on-a-provider", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  engine: vllm\n"), 18,
     "spec.engine", "a provider's model is relayed"),
    ("unknown-engine", DEPLOYMENT.format(name="dep", extra="  engine: tgi\n"), 9, "spec.engine", "'transformers'"),
]


@pytest.mark.parametrize("case,text,line,path,fragment", CASES, ids=[c[0] for c in CASES])
def test_a_wrong_engine_is_located(make_project, case, text, line, path, fragment):
    root = _project_with_data(make_project, {"base.yaml": BASE, "broken.yaml": text})
    with pytest.raises(SpecError) as info:
        load_resources(root, ["specs"])
    _assert_located(info.value, line, path, fragment)


@pytest.mark.parametrize("model,extra,export", [
    ("t", "  engine: llama-cpp\n", "[adapter, gguf]"),
    ("t", "  engine: vllm\n", "[adapter, merged]"),
    ("builtin:smollm2-135m-instruct", "  engine: llama-cpp\n", "[adapter]"),
    ("t", "", "[adapter]"),
])
def test_an_engine_with_its_export_loads(make_project, model, extra, export):
    base = BASE.replace(TUNING.format(name="t", dataset="d", prompt="p", extra=""),
                        TUNING.format(name="t", dataset="d", prompt="p", extra=f"  export: {export}\n"))
    text = DEPLOYMENT.format(name="dep", extra=extra).replace("model: t", f"model: {model}")
    root = _project_with_data(make_project, {"base.yaml": base, "ok.yaml": text})
    by_key = {r.key: r for r in load_resources(root, ["specs"])}
    assert by_key["Deployment/dep"].spec.engine == (extra.split(": ")[1].strip() if extra else "transformers")
