"""Resolving a family component to files on disk, downloading from ModelScope only what is missing.

Nothing is downloaded when every needed file is present and whole; a partial file is deleted and
fetched again (or reported when offline), never loaded. The download function is injectable and
has the keyword interface of ``modelscope.hub.snapshot_download.snapshot_download``.

A branch or tag moves; a commit does not. Before downloading, the branch or tag is resolved to the
commit it points at (``commit_of``, injectable too), the files are downloaded at that commit, and
the commit is remembered beside them, so a run's lock names the exact revision its weights came
from even when the recipe says ``master``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import structlog

from wanflow.errors import ModelLoadError
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.sources.files import Match, match, rel
from wanflow.sources.spec import DEFAULT_REVISION, Source, cache_root, parse_source

log = structlog.get_logger(__name__)

Download = Callable[..., object]  # (model_id, *, revision, local_dir, allow_patterns, ignore_patterns)
CommitOf = Callable[[str, str], str]  # (repo, branch or tag) -> the commit it points at now
REVISIONS = ".wanflow-revisions.json"  # relative path -> {"revision": asked for, "commit": downloaded at}
_COMMIT = re.compile(r"[0-9a-f]{40}")  # a full git commit id
_TRUE = ("1", "true", "yes", "on")


@attrs.frozen
class ResolvedComponent:
    """A component's files, in pattern order, and where they came from (recorded in the lock)."""

    files: tuple[Path, ...]
    source: str  # canonical: "modelscope:ORG/REPO@REV", "builtin:NAME" or an absolute path
    revision: str | None  # the commit when known, else the branch/tag; None for local and builtin sources
    root: Path  # the folder the patterns are relative to


@attrs.frozen
class ComponentStatus:
    """One line of ``wanflow models``: is a component's every file present, and where."""

    component: str
    present: bool
    where: Path
    missing: tuple[str, ...]  # patterns, shards or broken files
    source: str


def modelscope_download(model_id: str, **kwargs: object) -> object:
    """ModelScope's own client, imported only when a download is really needed (it is slow to import)."""
    from modelscope.hub.snapshot_download import snapshot_download

    return snapshot_download(model_id, **kwargs)


def modelscope_commit(repo: str, revision: str) -> str:
    """The commit a ModelScope branch or tag points at: the newest entry of its commit history."""
    import requests
    from modelscope.hub.utils.utils import get_endpoint

    reply = requests.get(f"{get_endpoint()}/api/v1/models/{repo}/commits",
                         params={"Ref": revision, "PageNumber": 1, "PageSize": 1}, timeout=30)
    reply.raise_for_status()
    commits = (reply.json().get("Data") or {}).get("Commit") or []
    if not commits:
        raise LookupError(f"no commit history for {repo}@{revision}")
    return str(commits[0]["Id"])


def env_models_root() -> Path | None:
    value = os.environ.get("WANFLOW_MODELS", "").strip()
    return Path(value).expanduser() if value else None


def env_offline() -> bool:
    return os.environ.get("WANFLOW_OFFLINE", "").strip().lower() in _TRUE


def resolve_component(component: ComponentSpec, override: tuple[str, Sequence[str]] | None = None, *,
                      models_root: Path | None = None, offline: bool | None = None,
                      download: Download = modelscope_download, base_dir: Path | None = None,
                      name: str = "", commit_of: CommitOf = modelscope_commit) -> ResolvedComponent:
    """The files of ``component`` (or of its recipe override), downloading what is missing."""
    text, patterns = _effective(component, override)
    source = parse_source(text, base_dir=base_dir)
    name = name or component.kind
    if source.kind != "modelscope":
        return _resolve_local(source, patterns, name)
    root = cache_root(source, models_root if models_root is not None else env_models_root())
    offline = env_offline() if offline is None else offline
    return _resolve_modelscope(source, patterns, root, name, offline, download, commit_of)


def _effective(component: ComponentSpec, override: tuple[str, Sequence[str]] | None) -> tuple[str, tuple[str, ...]]:
    if override is None:
        return component.source, tuple(component.files)
    source, files = override
    return source or component.source, tuple(files) or tuple(component.files)


def _resolve_local(source: Source, patterns: tuple[str, ...], name: str) -> ResolvedComponent:
    path = source.path
    if not path.exists():
        raise ModelLoadError(_no_path_message(source, name))
    if path.is_file():
        found = match(path.parent, (path.name,))
        _raise_if_incomplete(found, source, path.parent, name, "")
        return ResolvedComponent(found.files, source.canonical, None, path.parent)
    found = match(path, patterns)
    _raise_if_incomplete(found, source, path, name, "")
    return ResolvedComponent(found.files, source.canonical, None, path)


def _no_path_message(source: Source, name: str) -> str:
    if source.kind == "builtin":
        return (f"{name}: source {source.text!r}: the model files shipped with wanflow are missing "
                f"(no folder {source.path}); reinstall wanflow (pip install -e .) or check the name")
    hint = f"; for a ModelScope repository write modelscope:{source.text}" if source.text.count("/") == 1 else ""
    return f"{name}: source {source.text!r}: no such file or folder ({source.path}){hint}"


def _resolve_modelscope(source: Source, patterns: tuple[str, ...], root: Path, name: str, offline: bool,
                        download: Download, commit_of: CommitOf) -> ResolvedComponent:
    found = match(root, patterns)
    stale = _stale(found, root, source.revision)
    if found.complete and not stale:
        return ResolvedComponent(found.files, source.canonical, _recorded_commit(found, root, source, name), root)
    if offline:
        raise ModelLoadError(_offline_message(source, found, stale, root, name, patterns))
    _remove_broken(found, root)
    commit = _resolve_commit(source, commit_of, name)
    kept = _download(source, patterns, found, root, name, download, commit)
    found = match(root, patterns)
    _raise_if_incomplete(found, source, root, name, " after downloading")
    _record_revision(root, tuple(f for f in found.files if rel(f, root) not in kept), source.revision, commit)
    return ResolvedComponent(found.files, source.canonical, _recorded_commit(found, root, source, name), root)


def _resolve_commit(source: Source, commit_of: CommitOf, name: str) -> str | None:
    """The commit to download at: the revision itself when it is one, else what it points at now."""
    if _COMMIT.fullmatch(source.revision):
        return source.revision
    try:
        commit = str(commit_of(source.repo, source.revision)).strip().lower()
    except Exception as exc:  # any client, network or server failure: download by name instead
        log.warning("commit unknown; downloading by branch or tag name", component=name, repo=source.repo,
                    revision=source.revision, problem=f"{type(exc).__name__}: {exc}",
                    effect=f"the lock records {source.revision!r}, not a commit")
        return None
    if not _COMMIT.fullmatch(commit):
        log.warning("commit unknown; downloading by branch or tag name", component=name, repo=source.repo,
                    revision=source.revision, problem=f"ModelScope answered {commit!r}, not a commit id")
        return None
    return commit


def _recorded_commit(found: Match, root: Path, source: Source, name: str) -> str:
    """The commit the files were downloaded at, when wanflow downloaded them all at one commit."""
    recorded = _read_revisions(root)
    commits = {recorded.get(rel(f, root), {}).get("commit") for f in found.files}
    if len(commits) == 1 and None not in commits:
        return commits.pop()
    if len(commits - {None}) > 1:
        log.warning("files of one component come from different commits", component=name, repo=source.repo,
                    commits=sorted(commits - {None}), fix=f"delete them from {root} and run again")
    return source.revision  # placed by hand or by another tool: only the branch or tag is known


def _stale(found: Match, root: Path, revision: str) -> list[str]:
    """Files downloaded at another revision than a pinned one (any revision is fine for master)."""
    if revision == DEFAULT_REVISION:
        return []
    recorded = _read_revisions(root)
    return [rel(f, root) for f in found.files
            if revision not in (recorded.get(rel(f, root), {}).get("revision"),
                                recorded.get(rel(f, root), {}).get("commit"))]


def _read_revisions(root: Path) -> dict[str, dict[str, str]]:
    """The record beside downloaded files; entries of older wanflows (a bare revision) are read too."""
    try:
        data = json.loads((root / REVISIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: {"revision": v} if isinstance(v, str) else v for k, v in data.items() if isinstance(v, (str, dict))}


def _record_revision(root: Path, files: tuple[Path, ...], revision: str, commit: str | None) -> None:
    entry = {"revision": revision} | ({"commit": commit} if commit else {})
    data = _read_revisions(root) | {rel(f, root): entry for f in files}
    tmp = root / f"{REVISIONS}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, root / REVISIONS)


def _remove_broken(found: Match, root: Path) -> None:
    for path, why in found.broken:
        log.warning("partial file removed before downloading it again", file=str(root / path), problem=why)
        (root / path).unlink(missing_ok=True)


def _download(source: Source, patterns: tuple[str, ...], found: Match, root: Path, name: str,
              download: Download, commit: str | None) -> set[str]:
    """Download what is missing at ``commit`` (else the branch or tag); the files kept as they were."""
    broken = {p for p, _ in found.broken}
    keep = sorted(rel(f, root) for f in found.files if rel(f, root) not in broken)
    keep = [] if source.revision != DEFAULT_REVISION else keep  # a pinned revision lets ModelScope check each file
    root.mkdir(parents=True, exist_ok=True)
    log.info("downloading", component=name, repo=source.repo, revision=source.revision, commit=commit,
             patterns=list(patterns), into=str(root))
    at = source.revision + (f" (commit {commit})" if commit and commit != source.revision else "")
    try:
        download(source.repo, revision=commit or source.revision, local_dir=str(root),
                 allow_patterns=list(patterns), ignore_patterns=keep or None)
    except Exception as exc:  # any client, network or server failure
        raise ModelLoadError(f"{name}: downloading {list(patterns)} from ModelScope repository {source.repo} "
                             f"at revision {at} into {root} failed: {type(exc).__name__}: {exc}; "
                             "check the network, the repository name and the revision, then run again "
                             "(files already downloaded are kept)") from exc
    return set(keep)


def _raise_if_incomplete(found: Match, source: Source, root: Path, name: str, when: str) -> None:
    if found.complete:
        return
    lines = [f"{name}: source {source.canonical} is incomplete{when} (in {root}):"]
    lines += [f"  missing: {m}" for m in found.missing]
    lines += [f"  {p} {why}" for p, why in found.broken]
    lines.append(f"  the folder holds: {', '.join(listing(root)) or 'nothing'}")
    fix = ("run again to download the missing files" if source.kind == "modelscope"
           else "put the missing files there, or name the right files with [models.<component>].files")
    raise ModelLoadError("\n".join(lines) + f"\n  fix: {fix}")


def listing(root: Path, limit: int = 30) -> list[str]:
    """What a folder holds, for error messages: files and folders relative to it, hidden ones left out."""
    if not root.is_dir():
        return []
    items = sorted(rel(p, root) + ("/" if p.is_dir() else "") for p in root.rglob("*")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    return items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else [])


def _offline_message(source: Source, found: Match, stale: list[str], root: Path, name: str,
                     patterns: tuple[str, ...]) -> str:
    needed = list(found.missing) + [f"{p} ({why})" for p, why in found.broken]
    needed += [f"{p} (not recorded at revision {source.revision})" for p in stale]
    include = " ".join(f"'{p}'" for p in patterns)
    return (f"{name}: offline (WANFLOW_OFFLINE=1), and {source.canonical} needs files not present in {root}: "
            f"{', '.join(needed)}\n  fix: unset WANFLOW_OFFLINE and run again, or fetch them with:\n"
            f"  modelscope download {source.repo} --revision {source.revision} --local-dir {root} "
            f"--include {include}")


def models_status(family: FamilySpec, *, models_root: Path | None = None,
                  base_dir: Path | None = None) -> list[ComponentStatus]:
    """For ``wanflow models``: each component of a family, whether it is all there, and where; no download."""
    root_base = models_root if models_root is not None else env_models_root()
    out = []
    for key, component in family.components.items():
        source = parse_source(component.source, base_dir=base_dir)
        where = cache_root(source, root_base) if source.kind == "modelscope" else source.path
        found = match(where.parent, (where.name,)) if where.is_file() else match(where, component.files)
        problems = found.missing + tuple(f"{p} ({why})" for p, why in found.broken)
        out.append(ComponentStatus(key, found.complete, where, problems, source.canonical))
    return out
