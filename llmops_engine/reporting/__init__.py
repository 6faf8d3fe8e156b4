"""`llmops report`: one self-contained HTML page of what the engine knows.

`collect.py` gathers records, artifacts, the journal and request logs (read-only), `svg.py`
draws the charts, `page.py` writes the HTML (through `markup.py`, which escapes). This module
is the only one that writes: the page, atomically, where the user asked (default
`<state_dir>/report.html`). Called by the CLI and by the apply workflow after apply.
"""

from __future__ import annotations

import os
import uuid
from contextlib import suppress
from pathlib import Path

from ..engine import Engine
from ..errors import LLMOpsError

DEFAULT_NAME = "report.html"


def write_report(engine: Engine, out: Path | None = None) -> Path:
    """Render the report and write it to `out` (default: the state dir); returns the path written."""
    from .collect import collect
    from .page import render

    target = Path(out) if out is not None else engine.project.state_dir / DEFAULT_NAME
    text = render(collect(engine))
    # A unique name opened with 0o666: the umask decides who may read it, as for any file the
    # user writes (mkstemp would make it 0600).
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except OSError as exc:
        with suppress(OSError):  # e.g. the parent is a file: there is no temporary to remove
            temporary.unlink()
        raise LLMOpsError(f"cannot write the report to {target}: {exc.strerror or exc}") from exc
    return target
