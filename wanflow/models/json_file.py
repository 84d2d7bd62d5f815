"""Reading a released JSON file (a DiT's config.json, a scheduler config) with the error a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wanflow.errors import ModelLoadError


def read_json_object(path: Path, what: str = "config") -> dict[str, Any]:
    """The JSON object in ``path``; ModelLoadError naming the file when it cannot be read or parsed
    (``what`` says what it is: "config", "scheduler config") or holds no object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable {what} ({err}); fetch it again.") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(doc).__name__}.")
    return doc
