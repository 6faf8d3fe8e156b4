"""Count tokens with a real model tokenizer, for `max_tokens` checks; loaded once per process.

Both supported tokenizers are byte-level (every token stands for at least one UTF-8 byte, with no
normalizer that could lengthen text; tests/test_guardrail_checks.py checks it on random text),
so a text of at most `limit` bytes is within `limit` tokens and is never tokenized: most
requests cost a `len(text.encode())`. The smollm2 tokenizer comes from the GGUF file of the
pinned package (converted by transformers, ~6 s); its `tokenizer.json` is then kept under the
llmops cache directory (LLMOPS_CACHE_DIR, default ~/.cache/llmops), keyed by the package's
pinned version, so later processes load it with the `tokenizers` library in ~0.1 s.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import GuardrailError

_LOADED: dict[str, Callable[[str], int]] = {}
_LOCK = threading.Lock()


def exceeds(ref: str, text: str, limit: int) -> bool:
    """Whether `text` is more than `limit` tokens of tokenizer `ref`."""
    # A lone surrogate (JSON allows "\ud800") is no UTF-8 character: the tokenizer refuses it, so
    # it is counted as the replacement character a decoder would show.
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:  # ≤ limit bytes ⇒ ≤ limit tokens
        return False
    return counter(ref)(data.decode("utf-8", "replace")) > limit


def counter(ref: str) -> Callable[[str], int]:
    """A function counting `ref`'s tokens in a text (no special tokens added); loaded on first use."""
    with _LOCK:
        if ref not in _LOADED:
            _LOADED[ref] = _load(ref)
        return _LOADED[ref]


def _load(ref: str) -> Callable[[str], int]:
    if ref == "builtin:tiny-llama":
        from ..models.tokenizer import build_byte_tokenizer

        core = build_byte_tokenizer().backend_tokenizer
    elif ref == "builtin:smollm2-135m-instruct":
        core = _packaged_tokenizer("smollm2-135m-instruct")
    else:
        raise GuardrailError(f"max_tokens: unknown tokenizer '{ref}'")
    return lambda text: len(core.encode(text, add_special_tokens=False).ids)


def _packaged_tokenizer(name: str):
    from tokenizers import Tokenizer

    from ..models.builtin import PACKAGED_MODELS, packaged_gguf_path
    from ..errors import ModelLoadError

    packaged = PACKAGED_MODELS[name]
    cached = _cache_dir() / f"{packaged.package}-{packaged.version}-{Path(packaged.file).stem}.tokenizer.json"
    if cached.is_file():
        try:
            return Tokenizer.from_file(str(cached))
        except Exception:  # a damaged cache file (the tokenizers library raises plain Exception): rebuild it
            cached.unlink(missing_ok=True)
    try:
        gguf, _ = packaged_gguf_path(name)
    except ModelLoadError as exc:
        raise GuardrailError(f"max_tokens: the tokenizer of builtin:{name} is not available: {exc}") from exc
    from transformers import AutoTokenizer

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader prints a progress bar
            core = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).backend_tokenizer
    except Exception as exc:  # transformers' GGUF path raises ValueError/KeyError/OSError alike
        raise GuardrailError(f"max_tokens: cannot read the tokenizer of builtin:{name} from {gguf.name}: {exc}") from exc
    _keep(core, cached)
    return core


def _cache_dir() -> Path:
    return Path(os.environ.get("LLMOPS_CACHE_DIR") or Path.home() / ".cache" / "llmops") / "tokenizers"


def _keep(core, cached: Path) -> None:
    """Write the converted tokenizer atomically; a cache that cannot be written only costs time."""
    temporary = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        core.save(str(temporary))
        os.replace(temporary, cached)
    except Exception:  # OSError, or the tokenizers library's plain Exception for a failed write
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
