"""The plugin hooks: what a plugin can add to wanflow (DESIGN.md §9).

Built-in families, samplers, savers and attention backends register through these same hooks. A plugin is any
object or module with ``@hookimpl`` functions, advertised under the ``wanflow`` entry-point
group. Every name it registers must be new: a collision is an error naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pluggy

PROJECT = "wanflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@attrs.frozen
class SamplerEntry:
    """A solver name and how to get it (loaded lazily: validation needs no torch).

    ``load()`` returns a ``wanflow.sampling.Solver``: a stateless ``step(state, model_fn, schedule)``
    and ``schedule(steps, shift, strength)`` giving the σ grid (strength < 1: the grid starts at
    σ = strength and still takes ``steps`` steps)."""

    name: str
    load: Callable[[], Any]
    description: str = ""


@attrs.frozen
class SaverEntry:
    """An output format: ``save(frames uint8 (T,H,W,3), path, fps, metadata) -> list[Path]``."""

    name: str
    suffix: str  # ".mp4", ".gif"
    load: Callable[[], Callable[..., Any]]
    description: str = ""


@attrs.frozen
class AttentionEntry:
    """An attention backend, selectable as ``[runtime].attention``.

    ``load()`` returns the kernel: ``(q, k, v) -> out``, each (B, L, H, D), no mask, scale
    1/sqrt(D). ``problems(device, dtype)`` says why it cannot run on ``device`` ("cpu", "cuda",
    "cuda:N") with the DiT in ``dtype`` ("bf16", "fp16", "fp32"): empty when it can; validation
    asks it before any model loads. Both are called lazily, so planning needs no torch.
    ``version`` is bumped when the kernel's numbers change; it and the installed versions of
    ``packages`` (distribution names the kernel comes from) are part of the denoise step's key.
    """

    name: str
    version: str
    load: Callable[[], Callable[..., Any]]
    problems: Callable[[str, str], list[str]]
    packages: tuple[str, ...] = ()
    description: str = ""


class Hooks:
    """Hook specifications; each returns what the plugin adds (``None`` or empty for nothing)."""

    @hookspec
    def wanflow_families(self) -> list:
        """Model families (``wanflow.recipe.FamilySpec``) this plugin provides."""

    @hookspec
    def wanflow_samplers(self) -> list[SamplerEntry]:
        """Solvers this plugin provides, selectable as ``[sampler].solver``."""

    @hookspec
    def wanflow_savers(self) -> list[SaverEntry]:
        """Output formats this plugin provides, selectable as ``[output].format``."""

    @hookspec
    def wanflow_attention_backends(self) -> list[AttentionEntry]:
        """Attention backends this plugin provides, selectable as ``[runtime].attention``."""

    @hookspec
    def wanflow_pipelines(self) -> Mapping[str, Any]:
        """Pipelines (name -> object that builds a family's steps) this plugin provides."""

    @hookspec
    def wanflow_step_kinds(self) -> list:
        """Step kinds (objects with ``kind``, ``version``, ``reads``, ``output``, ``run``) this plugin provides."""

    @hookspec
    def wanflow_step_started(self, step: Any) -> None:
        """Observe a step starting (step spec with kind, key, params)."""

    @hookspec
    def wanflow_step_finished(self, step: Any, outcome: Mapping[str, Any]) -> None:
        """Observe a step finishing (hit or miss, duration, bytes)."""
