"""Internal errors are bugs: the traceback goes to a log file, the user gets one line.

Every command (and every failed apply step) that meets an exception outside the project's
error tree calls `log_internal_error`, so no user ever reads a raw traceback and a bug
report can attach the file it names.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path


def log_internal_error(state_dir: Path, exc: BaseException) -> Path:
    """Write the traceback under `<state_dir>/logs/` and return the file's path."""
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"internal-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
