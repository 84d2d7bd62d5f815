"""The conditioning of a training sample, built by the inference conditioners themselves.

A derivative family (VACE, Wan-Fun, speed control) conditions its DiT through the kinds it
declares (``wanflow.steps.cond_kinds``): control latents, reference latents, VACE contexts,
camera embeddings, motion offsets, start-frame channels, CLIP tokens. A training sample must
reach the DiT exactly as an inference input would, so each sample's conditioning is planned by
the same node builders and computed by the same steps as a generation's: the sample is shown to
them as a one-clip job (``sample_job``) whose ``[inputs]`` are the row's columns and whose
``[video]`` size is the sample's bucket. Each node is wrapped (``SampleConditioning``) so that
the sample's size and column values are part of its key instead of the recipe's: a changed
control video re-encodes that sample's control latents and nothing else.

In the train step the sample's tensors are handed over by the kinds' own hand-offs
(``cond_kinds.model_call``), as denoise does, and the model call is fed to the DiT.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.conditioners import Conditioner
from wanflow.engine.step import StepSpec, step_config

log = structlog.get_logger(__name__)

#: The kinds the base encodes (``train_encode``: y, clip, TI2V's first frame) build, with their
#: default options; a family declaring anything else trains through its declared conditioners.
BASE_KINDS = frozenset({"clip-tokens", "image-channels", "first-frame-latent", "source-latent"})
#: Kinds with nothing to do in training: the clip itself is the latent a sample learns, so a
#: kept source (video-to-video's starting latent) has no meaning there.
#: The negative reference caption (Video-As-Prompt) is read only by guidance's unconditional pass,
#: which training never runs.
INFERENCE_ONLY = frozenset({"source-latent", "vap-negative-prompt"})
#: Dataset column -> the ``[inputs]`` key it stands for in the sample's one-clip job.
COLUMN_INPUTS: Mapping[str, str] = {
    "input_image": "inputs.image",
    "end_image": "inputs.end_image",
    "control_video": "inputs.control_video",
    "reference_image": "inputs.reference_image",
    "vace_video": "inputs.vace.video",
    "vace_video_mask": "inputs.vace.mask",
    "vace_reference_image": "inputs.vace.reference",
    "camera_pose_file": "inputs.camera.pose_file",
    "vap_video": "inputs.vap_video",
    "input_audio": "inputs.audio",
    "s2v_pose_video": "inputs.s2v_pose_video",
    "longcat_video": "inputs.longcat_video",
}
#: Value columns -> (``[inputs]`` key, how the text is read).
VALUE_INPUTS: Mapping[str, tuple[str, Any]] = {
    "camera_control_direction": ("inputs.camera.direction", str),
    "camera_control_speed": ("inputs.camera.speed", float),
    "motion_bucket_id": ("inputs.motion_bucket", lambda text: int(float(text))),
    "vap_prompt": ("inputs.vap_prompt", str),
}
#: ``[inputs.vace]`` settings that are the recipe's for every sample (how a context is built).
RECIPE_SETTINGS = ("inputs.vace.scale", "inputs.vace.binarize_mask", "inputs.vace.reference_resize",
                   "inputs.audio_sample_rate", "inputs.longcat_cond_frames")
#: The camera speed of a row that names a direction but no speed (the schema's default).
DEFAULT_CAMERA_SPEED = 1 / 54
SIZE_KEYS = ("video.width", "video.height", "video.frames")


def declared_conditioning(family: Any) -> bool:
    """Whether the family's samples are conditioned through its declared conditioners: any kind
    the base encodes do not build, or a base kind with options (the Fun models' zeros)."""
    return any(c.kind not in BASE_KINDS or c.options for c in family.conditioners)


def trained_conditioners(family: Any) -> tuple[Conditioner, ...]:
    """The family's conditioners that a training sample gets, in declared order."""
    return tuple(c for c in family.conditioners if c.kind not in INFERENCE_ONLY)


def frame_inputs(family: Any) -> frozenset[str] | None:
    """The columns a frame of the clip fills when a row leaves them empty (None: the base rule).

    A derivative family takes the clip's first frame as its start image where the image is
    required (Control-Camera) or is what the I2V channels are for (InP), as DiffSynth's training
    scripts pass ``input_image`` for those; a Control model's start image is optional and absent
    unless the row names one (DiffSynth trains Control on the control video alone). The last
    frame is the end image only where one is required."""
    if not declared_conditioning(family):
        return None
    out = set()
    inp = "control_video" not in family.accepted_inputs and any(c.kind == "image-channels"
                                                                for c in family.conditioners)
    if "image" in family.required_inputs or inp:
        out.add("input_image")
    if "end_image" in family.required_inputs:
        out.add("end_image")
    return frozenset(out)


# ---------------------------------------------------------------------------- the sample as a job


class _SampleResolved:
    """A resolved recipe as one sample's generation would see it: its own values, the rest shared."""

    def __init__(self, base: Any, values: Mapping[str, Any]):
        self.base, self.values = base, values

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (a copy being built): never recurse
            raise AttributeError(name)
        return getattr(self.base, name)


def sample_values(job: Any, sample: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """(the sample's values, {input role: frame of the clip}) for the node builders.

    The recipe's ``[inputs]`` are left out (they are the validation's), the sample's columns put
    in; an input that is a frame of the clip names the clip and the frame it takes."""
    values = {k: v for k, v in job.values.items() if not k.startswith("inputs.") or k in RECIPE_SETTINGS}
    values |= {"video.width": sample.target.width, "video.height": sample.target.height,
               "video.frames": sample.target.frames}
    frames: dict[str, int] = {}
    for column, ref in sample.inputs:
        key = COLUMN_INPUTS.get(column)
        if key is None:
            continue
        values[key] = ref.path
        if ref.frame is not None:
            frames[key.removeprefix("inputs.")] = ref.frame
    for column, text in sample.values:
        if column in VALUE_INPUTS:
            key, read = VALUE_INPUTS[column]
            values[key] = read(text)
    if any(values.get(f"inputs.camera.{k}") is not None for k in ("direction", "speed", "pose_file")):
        values.setdefault("inputs.camera.direction", "Left")  # what [inputs.camera] means without one
        values.setdefault("inputs.camera.speed", DEFAULT_CAMERA_SPEED)
    return values, frames


def sample_job(job: Any, sample: Any) -> tuple[Any, dict[str, int]]:
    """The job a generation of this one sample would be, and its inputs taken from clip frames."""
    values, frames = sample_values(job, sample)
    return attrs.evolve(job, resolved=_SampleResolved(job.resolved, values)), frames


def sample_conditioning_nodes(job: Any, sample: Any) -> list[tuple[str, StepSpec]]:
    """(conditioner role, node) of every conditioner the sample gives work, in declared order,
    each named ``train/<role>:<sample>``."""
    view, frames = sample_job(job, sample)
    from wanflow.steps.cond_kinds import IMPLEMENTATIONS
    from wanflow.steps.train_s2v import TRAIN_NODES

    out = []
    for declared in trained_conditioners(job.family):
        build = TRAIN_NODES.get(declared.kind, IMPLEMENTATIONS[declared.kind].node)
        spec = build(view, declared)
        if spec is not None:
            spec = _training_form(declared.kind, spec, trained_parts(job))
            out.append((declared.role, wrapped(spec, view.values, frames, f"train/{declared.role}:{sample.index}")))
    return out


def trained_parts(job: Any) -> tuple[str, ...]:
    """The family's ``trainable_parts`` that ``[train].components`` trains (its controller, say)."""
    return tuple(c for c in job.resolved.recipe.train.components if c in job.family.trainable_parts)


def _training_form(kind: str, spec: StepSpec, parts: tuple[str, ...] = ()) -> StepSpec:
    """The node as a training sample reads its input where that differs from a generation:
    Video-As-Prompt's reference video is a dataset video column, read (as DiffSynth's dataset
    reads the clip beside it) as its first frames, not frames picked across it. A conditioner
    whose own model trains (``parts``: speed control's controller) gives the sample its raw
    input instead of its frozen output, and the train step runs that model."""
    if kind == "vap-video":
        from wanflow.steps.cond_vap import as_training

        return as_training(spec)
    if kind == "motion-bucket":
        from wanflow.steps.cond_motion import COMPONENT, as_trained

        return as_trained(spec) if COMPONENT in parts else spec
    return spec


def wrapped(spec: StepSpec, values: Mapping[str, Any], frames: Mapping[str, int], name: str) -> StepSpec:
    """``spec`` as a sample's node: what it reads of the sample (size, inputs) becomes its own
    configuration, keyed; the rest (tiling, runtime) it still reads from the recipe."""
    own = {k: values.get(k) for k in spec.params_read if k in SIZE_KEYS or k.startswith("inputs.")}
    reads = tuple(k for k in spec.params_read if k not in own)
    taken = {role: frames[role] for role in spec.files if role in frames}
    step = SampleConditioning(spec.step, tuple(sorted(own.items())), tuple(sorted(taken.items())), reads)
    return attrs.evolve(spec, name=name, step=step, reads=reads)


# ---------------------------------------------------------------------------- the wrapping step


class SampleConditioning:
    """An inference conditioning step run for one training sample.

    Its key is the inner step's kind, version and configuration, the sample's values it reads
    (``params``: size, column values) and which frame of the clip an input is (``frames``); the
    files and weights are the node's. A file that can no longer be decoded gives
    ``{"unreadable": …}``: the train step leaves that sample out and says so.
    """

    kind = "train-conditioning"
    version = 1
    output = "tensors"

    def __init__(self, inner: Any, params: tuple[tuple[str, Any], ...], frames: tuple[tuple[str, int], ...],
                 reads: tuple[str, ...]):
        self.inner, self.params, self.frames, self.reads = inner, params, frames, reads

    def key_config(self) -> dict[str, Any]:
        inner = {"kind": self.inner.kind, "version": self.inner.version, **step_config(self.inner)}
        return {"step": inner, "params": dict(self.params), "frames": dict(self.frames)}

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.errors import ModelInputError

        with tempfile.TemporaryDirectory(prefix="wanflow-frame-") as tmp:
            try:
                return self.inner.run(_SampleContext(ctx, dict(self.params), dict(self.frames), Path(tmp)))
            except (ModelInputError, OSError, RuntimeError, ValueError) as exc:
                log.warning("train.sample_unreadable", step=self.inner.kind, error=str(exc).splitlines()[0][:200],
                            note="the sample is left out of training")
                return {"unreadable": torch.ones(1)}


class _SampleContext:
    """The engine's context with the sample's values as params, and a frame of the clip as an
    image file (the frame at the sample's size, so the image reader leaves it as it is)."""

    def __init__(self, ctx: Any, params: dict[str, Any], frames: dict[str, int], tmp: Path):
        self._ctx, self._frames, self._tmp = ctx, frames, tmp
        self.params = {**ctx.params, **params}

    def file(self, role: str) -> Path:
        path = self._ctx.file(role)
        if role not in self._frames:
            return path
        return clip_frame(path, self._frames[role], self.params["video.width"], self.params["video.height"],
                          self._tmp / f"{role}.png")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def clip_frame(video: Path, frame: int, width: int, height: int, out: Path) -> Path:
    """Frame ``frame`` of ``video`` resized and cropped to width×height, written losslessly to
    ``out``: read back as an image it is exactly that frame of the clip as a video input."""
    from PIL import Image

    from wanflow.output import load_video

    Image.fromarray(load_video(video, frame + 1, width, height)[frame]).save(out)
    return out
