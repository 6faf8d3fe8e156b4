"""HTML that escapes by default: the report's only way to write a tag.

Every value on the report page comes from records, artifacts, the journal or request logs,
all of which hold strings a spec author or an HTTP client chose (resource names, error
messages, model versions). `h()` escapes each child and attribute value unless it is already
`Html` built here, so forgetting to escape takes a deliberate `Html(...)` around foreign text.
Used by `svg.py` and `page.py`; pure string building, no I/O.
"""

from __future__ import annotations

import html
import math
from typing import Iterable


VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})  # HTML elements with no end tag


class Html(str):
    """Markup built by this module (or a literal in our own code): inserted as is."""


def escape(value: object) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def h(tag: str, *children: object, **attrs: object) -> Html:
    """`<tag attrs>children</tag>`; attribute names use `_` for `-` (`class_` → `class`).
    None and False attributes are left out; children may be nested lists (flattened)."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")
        parts.append(name if value is True else f'{name}="{escape(value)}"')
    body = "".join(escape(child) for child in _flat(children))
    if tag in VOID:
        return Html(f"<{' '.join(parts)}>")
    return Html(f"<{' '.join(parts)}>{body}</{tag}>")


def join(items: Iterable[object]) -> Html:
    return Html("".join(escape(item) for item in _flat(items)))


def _flat(children) -> Iterable[object]:
    for child in children:
        if child is None:
            continue
        if isinstance(child, (list, tuple)) or (hasattr(child, "__iter__") and not isinstance(child, (str, bytes))):
            yield from _flat(child)
        else:
            yield child


def number(value: object) -> str:
    """A metric as a person reads it: 4 decimals below 1, 3 below 100, fewer above; '-' when absent."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        size = abs(value)
        if size >= 1000:
            return f"{value:,.0f}"
        text = f"{value:.1f}" if size >= 100 else f"{value:.3f}" if size >= 1 else f"{value:.4f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)
