"""LongCat-Video's 720p refinement, as the authors' ``generate_refine`` makes it.

``[inputs].longcat_refine = true`` adds a second stage after the clip is decoded: its frames are
upscaled in pixels (bilinearly to the refined size, then trilinearly to twice the frames unless
``longcat_refine_spatial_only``), padded at the end with copies of the last frame to a whole
number of attention chunks (4 latent frames), and VAE-encoded (``EncodeRefineVideo``); the
denoise step re-noises those latents to ``longcat_refine_strength`` (the authors' t_thresh,
0.5) with noise of the run's seed and walks the authors' grid below it, without guidance, with
the DiT patched by the ``[[lora]]`` tables whose target is ``"refine"`` (the release's
refinement LoRA) and its self-attention block-sparse (``models.longcat_bsa``, the DiT config's
``bsa_params``); the decode keeps the refined frames (``DecodeRefined``), and the save writes them
at the refined frame rate.

Every stage is a step of its own: a new refinement strength re-runs only the refinement's
denoise and what follows, never the 480p clip. Where wanflow differs from the authors' code:
the upscaled video's posterior sample draws its ε from a seeded generator (theirs from the global
RNG; ``steps/longcat_posterior.py``), so does the re-noising (``[sampler].seed``), and the
upscaling computes in fp32 (theirs in the DiT's dtype). Importing this module does not import
torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import KEYED_WHEN_SET, NOT_KEYED
from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.families.longcat import refine_size
from wanflow.steps.conditioning import VAE_READS
from wanflow.steps.decode import Decode
from wanflow.steps.denoise import CHECKPOINT_EVERY
from wanflow.steps.denoise_longcat import LongCatDenoise, release_shift
from wanflow.steps.longcat_posterior import encode_latents, posterior_field, stream_field
from wanflow.steps.save import SaveFrames, SaveVideo
from wanflow.steps.text import RUNTIME_READS

#: The nodes of the refinement stage.
ENCODE = "encode-conditioning:longcat-refine"
#: The node of the refinement's conditioning frames (an image-to-video clip's image, a
#: continuation's last frames), at the refined size and frame rate.
ENCODE_COND = "encode-conditioning:longcat-refine-cond"
DENOISE = "denoise:refine"
DECODE = "decode:refine"
#: The denoise input roles of the upscaled video's latents and of the conditioning latents.
ROLE, COND_ROLE = "refine", "refine-cond"
#: Latent frames per attention chunk along time: the refined clip is padded to a multiple of it
#: (the authors' ``bsa_latent_granularity``).
CHUNK_FRAMES = 4
#: The VAE's frames per latent frame after the first.
TEMPORAL_STRIDE = 4
#: Pixels per DiT token along height and width: the VAE's 8 x the patch's 2.
TOKEN_PIXELS = 16
#: What the upscaling and its padding read.
SIZE_READS = ("inputs.longcat_refine_spatial_only", "inputs.longcat_refine_width", "inputs.longcat_refine_height",
              "video.width", "video.height", "video.frames")


def refined_size(p: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of the refined video: the recipe's, else the authors' 720p size nearest
    the clip's aspect."""
    w, h = p["inputs.longcat_refine_width"], p["inputs.longcat_refine_height"]
    return (w, h) if w and h else refine_size(p["video.width"], p["video.height"])


def frame_factor(p: Mapping[str, Any]) -> int:
    """How many times the refinement multiplies the frames and the frame rate: 2, or 1 when
    spatial only."""
    return 1 if p["inputs.longcat_refine_spatial_only"] else 2


def refined_frames(p: Mapping[str, Any]) -> int:
    """Frames of the refined video: the clip's, doubled unless spatial only."""
    return p["video.frames"] * frame_factor(p)


def clip_cond(inputs: Any) -> str:
    """What conditions a clip that is refined: "image" (image-to-video), "video" (a
    continuation) or "" (text-to-video), from the recipe's ``[inputs]``."""
    return "image" if inputs.image is not None else "video" if inputs.longcat_video is not None else ""


def cond_frames(p: Mapping[str, Any], kind: str) -> int:
    """Conditioning frames of the refined clip: none for text-to-video, the image for
    image-to-video (``"image"``), the continuation's frames at the refined rate (``"video"``:
    ``longcat_cond_frames``, doubled with the frames, as the authors' ``cur_num_cond_frames``), as
    many of the previous refined segment's for a long video's later segments (``"segment"``)."""
    if kind == "image":
        return 1
    if kind in ("video", "segment"):
        return p["inputs.longcat_cond_frames"] * frame_factor(p)
    return 0


@attrs.frozen
class Layout:
    """How the refined clip's frames sit in its latents (the authors' BSA padding): the
    conditioning frames, first frame repeated ``front`` times, fill ``cond_latents`` latent frames
    (a multiple of 4, or 0); the generated frames, last frame repeated ``back`` times, fill
    ``noise_latents`` (a multiple of 4)."""

    cond_latents: int
    front: int
    noise_latents: int
    back: int

    @classmethod
    def of(cls, frames: int, cond: int) -> Layout:
        """The layout of ``frames`` refined frames whose first ``cond`` are conditioning."""
        cond_latents = front = 0
        if cond:
            cond_latents = _whole_chunks(1 + math.ceil((cond - 1) / TEMPORAL_STRIDE))
            front = 1 + (cond_latents - 1) * TEMPORAL_STRIDE - cond
        noise_latents = _whole_chunks(math.ceil((frames - cond) / TEMPORAL_STRIDE))
        return cls(cond_latents, front, noise_latents, noise_latents * TEMPORAL_STRIDE - (frames - cond))

    @property
    def read(self) -> int:
        """Frames the VAE reads of the padded clip: 1 + 4·(latents − 1) (diffusers' encoder, which
        the authors encode with, leaves the rest of a text-to-video clip's padding unread)."""
        return 1 + (self.cond_latents + self.noise_latents - 1) * TEMPORAL_STRIDE


def _whole_chunks(latents: int) -> int:
    return math.ceil(latents / CHUNK_FRAMES) * CHUNK_FRAMES


def upscale(frames: Any, width: int, height: int, new_frames: int, layout: Layout) -> Any:
    """(3, F, height, width) fp32 in [-1, 1] from (T, H, W, 3) uint8, as ``generate_refine``
    upscales: bilinear in space (corners aligned), to [0, 1], trilinear to ``new_frames`` (corners
    aligned), to [-1, 1], then the first frame repeated before and the last after (``layout``)."""
    import torch
    import torch.nn.functional as F

    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, h, w), 0..255
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True) / 255.0
    x = x.permute(1, 0, 2, 3)[None]  # (1, 3, T, H, W)
    x = F.interpolate(x, size=(new_frames, height, width), mode="trilinear", align_corners=True) * 2 - 1
    front, back = x[:, :, :1].expand(-1, -1, layout.front, -1, -1), x[:, :, -1:].expand(-1, -1, layout.back, -1, -1)
    return torch.cat([front, x, back], dim=2)[0, :, :layout.read].contiguous()


@attrs.frozen
class EncodeRefineVideo:
    """"latents" (1, z, T', h, w): the clip's decoded frames (``frames``, (T, H, W, 3) uint8)
    upscaled and padded (``upscale``), encoded clean with the family's VAE."""

    vae_version: str
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    cond: str = ""  # "", "image" or "video": what conditions the clip (its frames are padded before)
    posterior: str = posterior_field()  # "mean" or "sample" (steps.longcat_posterior)
    stream: str = stream_field()  # the node whose ε a sample draws
    kind: str = "encode-longcat-refine"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*SIZE_READS, "inputs.longcat_cond_frames", *VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        width, height = refined_size(p)
        layout = Layout.of(refined_frames(p), cond_frames(p, self.cond))
        pixels = upscale(ctx.input("frames")["frames"], width, height, refined_frames(p), layout)
        return {"latents": encode_latents(self, ctx, pixels).contiguous()}


@attrs.frozen
class EncodeRefineCond:
    """"latents" (1, z, c, h, w): the refined clip's conditioning frames at the refined size, the
    first repeated before them to whole chunks (``Layout``), encoded clean: the image of an
    image-to-video clip, or the last frames of the video a continuation continues, at the refined
    frame rate (the authors pass ``video[::stride]`` at 30 fps)."""

    vae_version: str
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    cond: str = "image"  # "image", "video" or "segment" (the previous refined segment's ``frames``)
    posterior: str = posterior_field()  # "mean" or "sample" (steps.longcat_posterior)
    stream: str = stream_field()  # the node whose ε a sample draws
    kind: str = "encode-longcat-refine-cond"
    version: int = 1
    output: str = "tensors"

    @property
    def reads(self) -> tuple[str, ...]:
        """The sizes and the VAE's settings; the frame count and rate where frames condition."""
        frames = () if self.cond == "image" else ("inputs.longcat_cond_frames", "video.fps")
        return (*SIZE_READS, *frames, *VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.steps.cond_longcat import last_frames
        from wanflow.steps.media import image_tensor

        p = ctx.params
        width, height = refined_size(p)
        count = cond_frames(p, self.cond)
        if self.cond == "image":
            pixels = image_tensor(ctx.file("image"), width, height)  # (3, 1, H, W)
        elif self.cond == "segment":  # the authors pass the previous refined segment's frames on
            from wanflow.output import to_model_video

            pixels = torch.from_numpy(to_model_video(ctx.input("frames")["frames"][-count:].numpy()))
        else:
            pixels = last_frames(ctx.file("longcat_video"), count, p["video.fps"] * frame_factor(p), width, height)  # (3, count, H, W)
        front = Layout.of(refined_frames(p), count).front
        pixels = torch.cat([pixels[:, :1].expand(-1, front, -1, -1), pixels], dim=1)
        return {"latents": encode_latents(self, ctx, pixels).contiguous()}


@attrs.frozen
class LongCatRefineDenoise(LongCatDenoise):
    """The refinement's denoise: the upscaled latents re-noised to the strength, the authors'
    grid below it, one unguided pass a step through the DiT patched by the refinement LoRAs with
    block-sparse self-attention."""

    segment: int = 0  # a long video's segment: its noise is drawn from [sampler].seed + segment
    #: How the block-sparse attention is computed ("gather" or "flex"): ``[runtime].sparse_attention``
    #: with "auto" resolved for the run's device at planning, keyed as the implementation it names
    #: (the two round apart; "auto" on CUDA and "flex" are one computation). Gather, what the step
    #: computed before the setting existed, keeps the keys it had.
    sparse_attention: str = attrs.field(default="gather", metadata=KEYED_WHEN_SET)
    kind: str = "denoise-longcat-refine"
    version: int = 1
    reads: tuple[str, ...] = ("sampler.seed", "sampler.noise_device", "inputs.longcat_refine_steps",
                              "inputs.longcat_refine_strength", "runtime.device", "runtime.dtype",
                              "runtime.attention", "runtime.compile", "model")

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import SolverState, start_state
        from wanflow.sampling.euler import euler_step
        from wanflow.sampling.longcat import flow_velocity
        from wanflow.steps.component import component_runtime
        from wanflow.steps.cond_call import tensor

        p = ctx.params
        device, _ = component_runtime(p, self.dit_dtype)
        clean = tensor(ctx.input(ROLE), "latents", ROLE).float()  # (1, z, c + n, h, w)
        cond = tensor(ctx.input(COND_ROLE), "latents", COND_ROLE).float() if self.conditions else None
        c = 0 if cond is None else cond.shape[2]
        schedule = self.schedule(p, ctx)
        resumed = ctx.load_partial()
        start = self.renoised(p, clean)[:, :, c:]  # the authors re-noise the whole clip, then set its first frames
        state = SolverState.from_tensors(dict(resumed[1])) if resumed else start_state(start)
        state = attrs.evolve(state, x=state.x.to(device))
        sparse = self.sparse(ctx, clean.shape, c)
        bar = ctx.progress(schedule.steps - state.index, unit="step")
        with torch.no_grad():
            dit = self._dit(ctx)
            context = tensor(ctx.input("pos"), "context", "pos").to(device)
            cache = None if cond is None else dit.cache_conditioning(cond.to(device), sparse=sparse)

            def velocity(x: Any, t: Any) -> Any:
                return flow_velocity(dit(x, t.reshape(1).expand(x.shape[0]).to(device), context, cache=cache,
                                         sparse=sparse))

            while state.index < schedule.steps:
                state = euler_step(state, velocity, schedule)
                bar.update(1)
                if state.index % CHECKPOINT_EVERY == 0 or state.index == schedule.steps:
                    ctx.save_partial(state.index, {k: v.cpu() for k, v in state.to_tensors().items()})
        bar.close()
        x = state.x.float().cpu()
        return {"latents": (x if cond is None else torch.cat([cond, x], dim=2)).contiguous()}

    def schedule(self, p: Mapping[str, Any], ctx: Any) -> Any:
        """The authors' grid of ``longcat_refine_steps`` at the release's shift, cut at the strength."""
        from wanflow.sampling.longcat import refine_schedule

        return refine_schedule(p["inputs.longcat_refine_steps"], release_shift(ctx), p["inputs.longcat_refine_strength"])

    def renoised(self, p: Mapping[str, Any], clean: Any) -> Any:
        """(1 − s)·latents + s·ε at the strength s, ε drawn from the run's seed."""
        from wanflow.sampling import initial_noise

        s = float(p["inputs.longcat_refine_strength"])
        seed = p["sampler.seed"] + self.segment
        noise = initial_noise(tuple(clean.shape), seed, noise_device=p["sampler.noise_device"]).cpu()
        return (1 - s) * clean + s * noise

    def sparse(self, ctx: Any, shape: tuple[int, ...], cond: int) -> Any:
        """The DiT config's block-sparse attention settings with this step's implementation
        (``longcat_bsa_params.SparseAttention``), checked against the refined clip's latents
        ``shape`` of which the first ``cond`` frames condition (planning checked them already; a
        run of a changed config file is checked again here)."""
        from wanflow.models.longcat_bsa_params import SparseAttention

        config = next((ctx.weight(f"dit.{i}") for i in range(self.dit_files)
                       if ctx.weight(f"dit.{i}").name == "config.json"), None)
        params = bsa_settings(config)
        _, _, frames, h, w = shape
        refuse_grid(attention_problems(params, frames - cond, cond, (h // 2, w // 2)), (frames, h // 2, w // 2))
        return SparseAttention(params, self.sparse_attention)


def bsa_settings(config: Any) -> Any:
    """The ``bsa_params`` of the DiT's ``config.json`` (``longcat_bsa_params.BsaParams``; the
    authors' class default where it has none). Torch-free: planning reads them."""
    from wanflow.models.longcat_bsa_params import BsaParams

    doc = json.loads(config.read_text(encoding="utf-8")) if config is not None else {}
    raw = doc.get("bsa_params") if isinstance(doc, dict) else None
    try:
        return BsaParams.from_config(raw) if raw else BsaParams()
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{config}: bsa_params {raw!r}: {err}") from None


def attention_problems(params: Any, noise: int, cond: int, grid_hw: tuple[int, int]) -> list[str]:
    """Why block-sparse attention cannot run over a refined clip of ``noise`` generated and
    ``cond`` conditioning latent frames of ``grid_hw`` tokens each: the generated frames' queries
    attend every frame's keys, the conditioning frames' their own."""
    found = params.problems((noise, *grid_hw), (noise + cond, *grid_hw))
    if cond and not found:
        found = params.problems((cond, *grid_hw), (cond, *grid_hw))
    return found


def refuse_grid(problems: list[str], grid: tuple[int, int, int]) -> None:
    """ModelInputError naming the refinement's keys, when ``problems`` says the grid cannot be attended."""
    if problems:
        raise ModelInputError(f"[inputs].longcat_refine: the refined clip's {grid} token grid cannot take the "
                              f"DiT's block-sparse attention ({'; '.join(problems)}); refine to a larger size "
                              "(longcat_refine_width / longcat_refine_height) or more frames")


def check_refined_grids(values: Mapping[str, Any], cond: str, long_video: bool, config: Any) -> None:
    """Refuse, before any model loads, a refinement whose token grids the DiT config's
    block-sparse attention cannot attend: each clip (a long video's first window, and its later
    ones holding the previous window's frames) at the refined size."""
    params = bsa_settings(config)
    width, height = refined_size(values)
    grid_hw = (height // TOKEN_PIXELS, width // TOKEN_PIXELS)
    for kind in ("", "segment") if long_video else (cond,):
        layout = Layout.of(refined_frames(values), cond_frames(values, kind))
        refuse_grid(attention_problems(params, layout.noise_latents, layout.cond_latents, grid_hw),
                    (layout.noise_latents + layout.cond_latents, *grid_hw))
    _refuse_gpu_chunks(values, params)


def _refuse_gpu_chunks(values: Mapping[str, Any], params: Any) -> None:
    """ModelInputError when a CUDA run computes with flex and the DiT config's chunks are not
    blocks FlexAttention's GPU kernel can tile."""
    from wanflow.models.longcat_bsa_params import gpu_problems
    from wanflow.steps.runtime import effective_device

    cuda = effective_device(values["runtime.device"]).startswith("cuda")
    found = gpu_problems(params) if cuda and sparse_implementation(values) == "flex" else []
    if found:
        raise ModelInputError(f"[runtime].sparse_attention = {values['runtime.sparse_attention']!r} computes the "
                              f"refinement's attention with FlexAttention here, and {found[0]}: "
                              'use sparse_attention = "gather"')


@attrs.frozen
class DecodeRefined(Decode):
    """The refined frames: the decode of the refinement's latents, less the padding frames."""

    keep: int = 0  # frames of the refined video
    skip: int = 0  # padding frames before them (the conditioning frames' ``Layout.front``)
    kind: str = "decode-longcat-refine"

    def _compute(self, ctx: Any) -> dict[str, Any]:
        frames = super()._compute(ctx)["frames"]
        return {"frames": frames[self.skip:self.skip + self.keep].contiguous()}


@attrs.frozen
class SaveRefined(SaveVideo):
    """The refined video, at twice the clip's frame rate where its frames were doubled."""

    kind: str = "save-longcat-refine"

    def fps(self, p: Mapping[str, Any]) -> float:
        return p["video.fps"] * frame_factor(p)


def sparse_implementation(values: Mapping[str, Any]) -> str:
    """The block-sparse attention implementation a run computes with: ``[runtime].sparse_attention``,
    "auto" being flex on a CUDA run whose torch has FlexAttention and gather otherwise."""
    from wanflow.models.longcat_bsa_params import implementation_for
    from wanflow.steps.runtime import effective_device

    return implementation_for(values["runtime.sparse_attention"], effective_device(values["runtime.device"]))


def refine_nodes(nodes: list[Any], resolved: Any, loras: tuple[tuple[str, str, float], ...],
                 lora_weights: Mapping[str, Any]) -> list[Any]:
    """The plan's nodes with the refinement stage after the clip's decode (a long video's: its
    chain, ``longcat_refine_long``), the saves reading it; unchanged when
    ``[inputs].longcat_refine`` is off. ``loras``: the refinement LoRAs' uses."""
    from wanflow.steps.longcat_refine_long import refine_chain
    from wanflow.steps.longcat_segments import JOIN

    if not resolved.values["inputs.longcat_refine"]:
        return nodes
    by_name = {n.name: n for n in nodes}
    denoise = by_name["denoise"]
    fields = {f.name: getattr(denoise.step, f.name) for f in attrs.fields(LongCatDenoise)
              if f.name not in ("kind", "version", "reads", "conditions", "tail", "loras")}
    step = LongCatRefineDenoise(**fields, loras=loras, sparse_attention=sparse_implementation(resolved.values))
    template = attrs.evolve(denoise, step=step, weights={
        role: w for role, w in denoise.weights.items() if not role.startswith("lora.")} | dict(lora_weights))
    if JOIN in by_name:
        added, last = refine_chain(nodes, resolved, template)
    else:
        added, last = _refine_clip(nodes, resolved, template), DECODE
    out = []
    for n in nodes:
        if isinstance(n.step, (SaveVideo, SaveFrames)):
            step = SaveRefined(n.step.saver) if isinstance(n.step, SaveVideo) else n.step
            n = attrs.evolve(n, step=step, inputs={**n.inputs, "frames": last})
        out.append(n)
        if n.name == (JOIN if JOIN in by_name else "decode"):
            out += added
    return out


def _refine_clip(nodes: list[Any], resolved: Any, template: Any) -> list[Any]:
    """One clip's refinement: its encode (and its conditioning frames' encode), denoise, decode."""
    from wanflow.engine.step import StepSpec

    by_name = {n.name: n for n in nodes}
    denoise, decode = by_name["denoise"], by_name["decode"]
    cond = clip_cond(resolved.recipe.inputs)
    vae = vae_fields(decode.step)
    inputs = {"pos": denoise.inputs["pos"], ROLE: ENCODE} | ({COND_ROLE: ENCODE_COND} if cond else {})
    layout = Layout.of(refined_frames(resolved.values), cond_frames(resolved.values, cond))
    added = [StepSpec(ENCODE, EncodeRefineVideo(*vae, cond=cond), inputs={"frames": "decode"}, weights=decode.weights)]
    if cond:
        source = next(n for n in nodes if n.files and set(n.files) <= {"image", "longcat_video"})
        added.append(StepSpec(ENCODE_COND, EncodeRefineCond(*vae, cond=cond), files=source.files,
                              weights=decode.weights))
    step = attrs.evolve(template.step, conditions=(COND_ROLE,) if cond else ())
    return [*added, attrs.evolve(template, name=DENOISE, step=step, inputs=inputs),
            attrs.evolve(decode, name=DECODE, inputs={"latents": DENOISE},
                         step=DecodeRefined(*vae, keep=refined_frames(resolved.values), skip=layout.front))]


def vae_fields(decode: Any) -> tuple[Any, ...]:
    """The VAE settings of a decode step, which the refinement's encodes and decodes share."""
    return decode.vae_version, decode.dtype, decode.device, decode.residency

