"""Re-run an archive and say, per output, whether it is bit-identical, and if not, why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.archive import open_archive
from wanflow.engine.cache import Cache
from wanflow.engine.explain import show
from wanflow.engine.lock import lock_differences
from wanflow.engine.runner import RunOptions, run_job
from wanflow.engine.step import Pipeline


@attrs.frozen
class OutputCheck:
    """One output of the original run against the reproduction."""

    name: str
    identical: bool
    old: str | None
    new: str | None


@attrs.frozen
class ReproReport:
    """The reproduction's archive, its per-output verdicts and the lock entries that differ."""

    archive: Path
    outputs: tuple[OutputCheck, ...]
    lock_diffs: tuple[tuple[str, Any, Any], ...]

    @property
    def identical(self) -> bool:
        return all(o.identical for o in self.outputs)

    def lines(self) -> list[str]:
        """Human-readable report."""
        out = [f"{o.name}: " + ("bit-identical" if o.identical else
               f"DIFFERS (sha256 {str(o.old)[:12]} → {str(o.new)[:12]})") for o in self.outputs]
        if not self.identical:
            out.append("lock entries that differ:" if self.lock_diffs else
                       "no lock entry differs: the steps are not deterministic")
            out += [f"  {k}: {show(a)} → {show(b)}" for k, a, b in self.lock_diffs]
        out.append(f"reproduction archived at {self.archive}")
        return out


def reproduce(archive: Path, load_text: Callable[[str, Path], Any],
              pipeline_for: Callable[[str], Pipeline], cache: Cache,
              opts: RunOptions) -> ReproReport:
    """Run the archived resolved recipe again (``opts.no_cache`` recomputes every step)."""
    arc = open_archive(archive)
    resolved = load_text(arc.resolved_text, arc.path / "resolved.toml")
    outcome = run_job(resolved, pipeline_for(resolved.model), cache, opts)
    old_out, new_out = arc.lock.get("outputs", {}), outcome.lock["outputs"]
    checks = tuple(
        OutputCheck(n, old_out.get(n, {}).get("sha256") == new_out.get(n, {}).get("sha256"),
                    old_out.get(n, {}).get("sha256"), new_out.get(n, {}).get("sha256"))
        for n in sorted(set(old_out) | set(new_out)))
    diffs = lock_differences(arc.lock, outcome.lock)
    old_steps, new_steps = arc.lock.get("steps", {}), outcome.lock["steps"]
    diffs += [(f"steps.{n}.key", old_steps.get(n, {}).get("key"), new_steps.get(n, {}).get("key"))
              for n in sorted(set(old_steps) | set(new_steps))
              if old_steps.get(n, {}).get("key") != new_steps.get(n, {}).get("key")]
    return ReproReport(outcome.archive, checks, tuple(diffs))
