"""Stage keys: sha256 over a stage's canonical inputs, and what changed.

A stage's inputs are a JSON document (name, stage version, source identity,
patch bytes in order, config, arch, toolchain, keys of consumed stages).
Same document, same key, same artifact.  ``changes`` compares two documents
and says in words what differs, for ``isobuild status``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def compute(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _named(items: list[Any]) -> dict[str, Any] | None:
    if all(isinstance(i, dict) and "name" in i for i in items):
        return {str(i["name"]): i for i in items}
    return None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two input documents."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{sub} added")
            elif k not in new:
                out.append(f"{sub} removed")
            else:
                out.extend(changes(old[k], new[k], sub))
        return out
    if isinstance(old, list) and isinstance(new, list):
        a, b = _named(old), _named(new)
        if a is not None and b is not None:
            out = [f"{path}: {n} added" for n in b if n not in a]
            out += [f"{path}: {n} removed" for n in a if n not in b]
            out += [f"{path}: {n} changed" for n in a if n in b and a[n] != b[n]]
            if not out:
                out.append(f"{path}: order changed")
            return out
    return [f"{path}: {_short(old)} -> {_short(new)}"]
