"""Source strings: what a recipe or a family writes, parsed into where the files come from.

Three kinds: ``modelscope:ORG/REPO[@REVISION]`` (downloaded into a cache), ``builtin:NAME`` (files
shipped inside wanflow under ``wanflow/assets/NAME/``) and a local file or folder (a folder in the
layout of the ModelScope repository, so the family's file patterns find the same names).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import attrs

from wanflow.errors import ModelLoadError

DEFAULT_REVISION = "master"  # ModelScope's default branch, as its own client uses
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # builtin:NAME -> ASSETS / NAME

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_BUILTIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@attrs.frozen
class Source:
    """A parsed source: ``repo``/``revision`` for ModelScope, ``path`` for local and builtin ones."""

    kind: Literal["modelscope", "builtin", "local"]
    text: str  # as written, for messages
    repo: str = ""  # "Wan-AI/Wan2.1-T2V-1.3B"
    revision: str = ""  # branch, tag or commit; "master" when not pinned
    path: Path | None = None

    @property
    def canonical(self) -> str:
        """The form recorded in locks: revision always explicit, paths absolute."""
        if self.kind == "modelscope":
            return f"modelscope:{self.repo}@{self.revision}"
        return f"builtin:{self.path.name}" if self.kind == "builtin" else str(self.path)


def parse_source(text: str, *, base_dir: Path | None = None) -> Source:
    """Parse a source string; relative local paths resolve against ``base_dir`` (the recipe's folder)."""
    if not isinstance(text, str) or not text.strip():
        raise ModelLoadError(f"source {text!r}: empty; write modelscope:ORG/REPO[@REVISION], "
                             "builtin:NAME, or a local file or folder")
    text = text.strip()
    if text.startswith("modelscope:"):
        return _modelscope(text)
    if text.startswith("builtin:"):
        return _builtin(text)
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return Source("local", text, path=path.resolve())


def _modelscope(text: str) -> Source:
    body = text.removeprefix("modelscope:")
    repo, at, revision = body.partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise ModelLoadError(f"source {text!r}: {repo!r} is not a ModelScope repository id; "
                             "write modelscope:ORG/REPO, e.g. modelscope:Wan-AI/Wan2.1-T2V-1.3B")
    if at and (not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith("/")):
        raise ModelLoadError(f"source {text!r}: revision {revision!r} is not a branch, tag or commit "
                             "name (letters, digits, '.', '_', '-', '/'); e.g. @master or @v1.0.0, "
                             "or leave out '@...' for master")
    return Source("modelscope", text, repo=repo, revision=revision if at else DEFAULT_REVISION)


def _builtin(text: str) -> Source:
    name = text.removeprefix("builtin:")
    if not _BUILTIN.fullmatch(name) or ".." in name:
        raise ModelLoadError(f"source {text!r}: {name!r} is not a builtin model name "
                             "(letters, digits, '.', '_', '-'); e.g. builtin:wanflow-tiny")
    return Source("builtin", text, path=ASSETS / name)


def cache_root(source: Source, models_root: Path | None) -> Path:
    """Where a ModelScope repository's files live: ``WANFLOW_MODELS/ORG/REPO`` or ModelScope's cache.

    ModelScope's own cache is ``$MODELSCOPE_CACHE`` (default ``~/.cache/modelscope/hub``) +
    ``models/ORG/REPO`` with '.' written '___'; using the same folder shares files with its users.
    """
    org, name = source.repo.split("/")
    if models_root is not None:
        return Path(models_root).expanduser() / org / name
    hub = os.environ.get("MODELSCOPE_CACHE") or os.path.join(Path.home(), ".cache", "modelscope", "hub")
    return Path(hub).expanduser() / "models" / org / name.replace(".", "___")
