"""What the engine knows about a step: a small protocol, and the spec of one node of a plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

#: ``tensors``: a dict of named tensors stored as safetensors; ``bytes``: a file stored as is.
OutputType = Literal["tensors", "bytes"]


class Progress(Protocol):
    """A bar a long step advances (denoise steps, decode tiles)."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class StepContext(Protocol):
    """Everything a running step may touch; it never sees the cache or the recipe."""

    params: Mapping[str, Any]

    def input(self, role: str) -> Any: ...

    def file(self, role: str) -> Path: ...

    def weight(self, role: str) -> Path: ...

    def progress(self, total: int, desc: str = "", unit: str = "it") -> Progress: ...

    def load_partial(self) -> tuple[int, Any] | None: ...

    def save_partial(self, done: int, state: Any) -> None: ...


@runtime_checkable
class Step(Protocol):
    """A step kind: a name, a version bumped when its numbers change, what it reads and makes."""

    kind: str
    version: int
    reads: tuple[str, ...]  # dotted keys (or fnmatch patterns) of resolved params
    output: OutputType

    def run(self, ctx: StepContext) -> Any: ...


@attrs.frozen
class WeightFile:
    """A weight file a step uses, with where it came from (recorded in the run's lock)."""

    path: Path = attrs.field(converter=Path)
    source: str = "local"
    revision: str = ""
    present: bool = True  # False: planned without it (explain, diff); such a plan cannot run


#: Field metadata of a step attribute that must not enter its key (see :func:`step_config`).
NOT_KEYED = {"key": False}
#: Field metadata of a step attribute keyed only when it differs from its default: a field added
#: to a step kind for a new computation leaves the keys of every existing computation as they were
#: (their cached outputs stay valid). Only for a default that computes what the kind computed
#: before the field existed.
KEYED_WHEN_SET = {"key": "when-set"}

#: Fields every step has; ``kind`` and ``version`` are keyed on their own, the other two are
#: the engine's plumbing (what is read is keyed through the params, the output type is the kind's).
_PROTOCOL_FIELDS = ("kind", "version", "reads", "output")


def step_config(step: Any) -> dict[str, Any]:
    """The step object's own configuration, which is part of its key.

    Two nodes of one kind differ by their configuration (the conditioning mode, the prompt key,
    the VAE version, the experts): without it in the key, two different computations over the
    same inputs would share one cached output. An attrs step contributes every field except the
    protocol ones and those marked ``metadata=NOT_KEYED`` (placement, and plugin objects whose
    identity is keyed as ``name@version`` through :attr:`StepSpec.uses`); a field marked
    ``metadata=KEYED_WHEN_SET`` only when it is not its default. Any other step gives
    ``key_config()``, or its public attributes.
    """
    if attrs.has(type(step)):
        fields = attrs.fields(type(step))
        return {f.name: getattr(step, f.name) for f in fields
                if f.name not in _PROTOCOL_FIELDS and f.metadata.get("key", True)
                and not (f.metadata.get("key") == "when-set" and getattr(step, f.name) == f.default)}
    custom = getattr(step, "key_config", None)
    if callable(custom):
        return dict(custom())
    return {k: v for k, v in vars(step).items()
            if not k.startswith("_") and k not in _PROTOCOL_FIELDS and not callable(v)}


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen
class StepSpec:
    """One node of a plan: a step kind applied to named inputs, files and weights."""

    name: str  # unique within the plan, e.g. "encode-text:positive"
    step: Step = attrs.field(eq=False)
    inputs: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)  # role -> node
    files: Mapping[str, Path] = attrs.field(factory=dict, converter=_frozen_map)  # role -> file
    weights: Mapping[str, WeightFile] = attrs.field(factory=dict, converter=_frozen_map)
    reads: tuple[str, ...] | None = None  # overrides step.reads for this node
    plugin: str = "wanflow"  # "name@version" of the plugin that provides the step kind
    #: "name@version" of every other plugin whose code the step runs (a saver, a solver): an
    #: upgraded plugin must not be served its old version's cached outputs.
    uses: tuple[str, ...] = attrs.field(default=(), converter=lambda v: tuple(sorted(set(v))))
    archive_as: str | None = None  # file name of this output in the run archive

    @property
    def params_read(self) -> tuple[str, ...]:
        """The dotted keys this node reads: its own list, else its kind's."""
        return tuple(self.reads if self.reads is not None else self.step.reads)


class Pipeline(Protocol):
    """What a model family registers: the steps that turn a resolved recipe into outputs.

    A pipeline that needs plugin-provided parts (savers, solvers) also has
    ``bind(catalog) -> Pipeline``; the registry binds it before handing it out, so the steps get
    those parts at planning and never consult the registry themselves.
    """

    def steps(self, resolved: Any) -> Sequence[StepSpec]: ...


class Catalog(Protocol):
    """What a bound pipeline may ask of the plugin registry at planning time."""

    def provided(self, what: str, name: str) -> tuple[Any, str]:
        """The registered ``what`` ("saver", "sampler") called ``name``, and "plugin@version"."""
        ...

    def attention_backend(self, name: str) -> Any:
        """The registered attention backend ``name`` (its kernel is loaded when a step runs)."""
        ...

    def attention_uses(self, name: str) -> tuple[str, ...]:
        """What a step attending with ``name`` is keyed on beyond the name: plugin and package versions."""
        ...


def pipeline_problems(pipeline: Any, resolved: Any) -> list[str]:
    """What the pipeline cannot honour in this recipe (optional hook; pure: no files, no models).

    `wanflow validate` reports these beside the recipe's own problems, and planning refuses them.
    """
    check = getattr(pipeline, "check", None)
    return list(check(resolved)) if callable(check) else []


def describe_runtime(pipeline: Any, resolved: Any) -> Mapping[str, Any]:
    """Device, dtypes and attention backend as the pipeline reports them (optional hook)."""
    describe = getattr(pipeline, "describe", None)
    return dict(describe(resolved)) if callable(describe) else {}
