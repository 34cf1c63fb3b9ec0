"""Text that can be stored and sent: no lone UTF-16 surrogates anywhere in a request or response.

JSON allows escapes such as ``"\\ud800"`` that decode to a lone surrogate: a Python ``str`` that
cannot be encoded as UTF-8, so SQLite, PNG text chunks and JSON responses all fail on it (one such
prompt used to break ``GET /api/jobs`` for every client). Requests are checked once at the edge
(:func:`find_lone_surrogate` in the schemas' validator); :func:`safe_text` makes any text that
still reaches a response encodable.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def find_lone_surrogate(value: Any, path: str = "") -> tuple[str, int] | None:
    """``(field path, character index)`` of the first lone surrogate in ``value`` (str, list, dict
    keys and values, nested), or None. Paths look like ``prompt``, ``styles.0``, ``override_settings.k``."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (path or "body", m.start()) if m else None
    if isinstance(value, dict):
        items = list(value.items())
        for key, item in items:
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return (path or "body", 0)
            found = find_lone_surrogate(item, name)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = find_lone_surrogate(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def surrogate_message(field: str, index: int) -> str:
    return (
        f"{field}: contains a lone UTF-16 surrogate at character {index} (e.g. an unpaired \\ud800 "
        "escape); text must be valid Unicode"
    )


def safe_text(text: Any) -> Any:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes (non-str values unchanged)."""
    if isinstance(text, str) and _SURROGATE.search(text):
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
