"""The recipe schema: frozen attrs classes, the one place where recipe defaults live.

Every field is declared with ``setting(default, why=...)``: the reason is shown by
``wanflow show``. A setting marked ``family=True`` takes the family's official value when the
family states one (``FamilySpec.defaults``) and the default written here otherwise. Range and
choice constraints live beside the default so that validation and documentation agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

Solver = str  # a name in the sampler registry ("euler", "unipc", "dpm++", "flow", or a plugin's)


def setting(default: Any = attrs.NOTHING, *, why: str, family: bool = False, ge: float | None = None,
            gt: float | None = None, le: float | None = None, factory: Any = None) -> Any:
    """Declare a recipe field with its reason and constraints (read by validation and `show`)."""
    meta = {"why": why, "family": family, "ge": ge, "gt": gt, "le": le}
    if factory is not None:
        return attrs.field(factory=factory, metadata=meta)
    return attrs.field(default=default, metadata=meta)


@attrs.frozen
class Prompt:
    text: str = setting("", why="what to generate; required by every generation family")
    negative: str = setting("", family=True, why="the family's official negative prompt unless set")


@attrs.frozen
class Video:
    width: int = setting(832, family=True, gt=0, why="480p landscape, the most common Wan size")
    height: int = setting(480, family=True, gt=0, why="480p landscape, the most common Wan size")
    frames: int = setting(81, family=True, ge=1, why="5 s at 16 fps; must be 4n+1 for the causal VAE")
    fps: int = setting(16, family=True, ge=1, le=240, why="the frame rate Wan2.1 was trained at")


@attrs.frozen
class StepCache:
    method: Literal["none", "teacache", "first-block", "magcache", "easycache"] = setting(
        "none", why="every step computed; a cache skips the block stack where the rule allows")
    threshold: float | None = setting(None, ge=0, why="the rule's threshold (None with target_speedup)")
    target_speedup: float | None = setting(
        None, ge=1, why="TeaCache: solve the threshold for this many times fewer DiT passes")
    mode: Literal["e", "e0"] = setting("e", why="TeaCache's signal: the time embedding (its default)")
    coefficients: str = setting("auto", why="TeaCache: the published set of the detected DiT, or 'calibrated'")
    calibrated: tuple[float, ...] = setting(factory=tuple, why="a calibration's polynomial, highest power first")
    calibrated_high_noise: tuple[float, ...] = setting(
        factory=tuple, why="A14B: the high-noise expert's own polynomial (empty: calibrated serves both)")
    ratios_cond: tuple[float, ...] = setting(factory=tuple, why="MagCache: calibrated ratios, conditional pass")
    ratios_uncond: tuple[float, ...] = setting(factory=tuple, why="MagCache: calibrated ratios, unconditional pass")
    max_skips: int = setting(2, ge=1, why="MagCache's K: consecutive skips at most")
    retention: float = setting(0.2, ge=0, le=1, why="MagCache, EasyCache: fraction of first steps always "
                               "computed (both default to 0.2)")


@attrs.frozen
class Sampler:
    solver: Solver = setting("unipc", family=True, why="the official Wan sampler")
    steps: int = setting(50, family=True, ge=1, le=1000, why="official Wan2.1 step count")
    shift: float = setting(5.0, family=True, gt=0, why="official flow shift for 480p/720p T2V")
    cfg: float = setting(5.0, family=True, ge=0, why="official guidance scale; 1.0 skips the negative pass")
    cfg_high_noise: float | None = setting(
        None, family=True, ge=0, why="A14B only: guidance of the high-noise expert (None: same as cfg)")
    boundary: float | None = setting(
        None, family=True, ge=0, le=1, why="A14B only: the σ·1000 fraction where the experts switch")
    seed: int | None = setting(
        None, ge=0, why="None draws a seed once at run time and records it in the run's lock")
    noise_device: Literal["cpu", "cuda"] = setting(
        "cpu", why="CPU noise gives the same video for a seed on every machine")
    denoising_strength: float = setting(
        1.0, ge=0, le=1, why="1.0 starts from pure noise; < 1 keeps some of [inputs].video/image")
    cache: StepCache = setting(factory=StepCache, why="table")
    sliding_window_size: int | None = setting(
        None, ge=1, why="latent frames per window (DiffSynth's unit); None: the whole clip in one pass")
    sliding_window_stride: int | None = setting(
        None, ge=1, why="latent frames between window starts (≤ the size, so windows overlap)")
    cfg_merge: bool = setting(False, why="DiffSynth's cfg_merge: prompt and negative in one batch-2 "
                              "forward (the same numbers to fp32 rounding; pays on small jobs: at 480p on an H200 no faster, "
                              "more memory)")
    cfg_zero_star: bool = setting(False, family=True, why="CFG-Zero* (Fan et al. 2025): the negative pass rescaled by "
                                  "its optimal scale")
    cfg_zero_init_steps: int = setting(0, ge=0, why="CFG-Zero*: first steps with zero velocity "
                                       "(the authors use 1)")
    slg_blocks: tuple[int, ...] = setting(factory=tuple, why="skip-layer guidance off; e.g. [9]")
    slg_scale: float = setting(1.0, ge=0, why="skip-layer guidance strength (1: the ComfyUI wrapper's)")
    slg_start: float = setting(0.1, ge=0, le=1, why="fraction of the steps where skip-layer guidance starts")
    slg_end: float = setting(1.0, ge=0, le=1, why="fraction of the steps where it ends (inclusive)")
    slg_mode: Literal["uncond", "extra"] = setting(
        "uncond", why="uncond: the negative pass skips the blocks (the wrapper); extra: SD3.5's extra pass")
    strength_schedule: Literal["rescale", "truncate"] = setting(
        "rescale", why="DiffSynth's meaning: all `steps` steps on a grid from σ = strength to 0; "
        "\"truncate\" is diffusers' (the strength-1 grid minus its first steps)")


@attrs.frozen
class Camera:
    direction: Literal["Left", "Right", "Up", "Down", "LeftUp", "LeftDown", "RightUp", "RightDown",
                       "ZoomIn", "ZoomOut"] = setting("Left", why="Fun Camera's preset motions")
    speed: float = setting(1 / 54, gt=0, why="the Fun authors' preset step per frame (1/54)")
    pose_file: str | None = setting(None, why="camera poses (CameraCtrl's 19 numbers a row) instead "
                                    "of direction and speed")


def one_or_more_paths(value: Any) -> Any:
    """A path, or an array of two or more: ``["a.png"]`` is stored as ``"a.png"``, so that both
    spellings are one recipe (the same keys and resolved.toml); arrays become tuples (frozen)."""
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else tuple(value)
    return value


@attrs.frozen
class Vace:
    video: str | None = setting(None, why="control video for VACE (depth, pose, inpaint source…)")
    mask: str | None = setting(None, why="where VACE may change the control video")
    reference: str | tuple[str, ...] | None = attrs.field(default=None, converter=one_or_more_paths, metadata={
        "why": "reference image(s) for VACE subject consistency: a path, or an array of paths, each one "
               "more leading latent frame in the order given"})
    scale: float = setting(1.0, ge=0, why="strength of the VACE hints, as in the official code")
    binarize_mask: bool = setting(True, why="the VACE authors and diffusers cut the mask at 0.5; "
                                  "false keeps soft values, as DiffSynth does")
    reference_resize: Literal["letterbox", "stretch"] = setting(
        "letterbox", why="the VACE authors fit the reference inside a white canvas keeping its aspect; "
        "stretch resizes it to the video size, as DiffSynth's examples do")


@attrs.frozen
class Inputs:
    image: str | None = setting(None, why="first frame (I2V, FLF2V, TI2V, Fun InP)")
    end_image: str | None = setting(None, why="last frame (FLF2V, Fun InP)")
    video: str | None = setting(None, why="source video for video-to-video with denoising_strength < 1")
    control_video: str | None = setting(None, why="Fun Control: depth/pose/canny video")
    reference_image: str | None = setting(None, why="Fun reference / Animate character image")
    mask: str | None = setting(None, why="inpainting mask video or image")
    audio: str | None = setting(None, why="speech for S2V")
    pose_video: str | None = setting(None, why="Animate: driving pose video")
    face_video: str | None = setting(None, why="Animate: driving face video")
    camera: Camera | None = setting(None, why="Fun Camera motion preset")
    vace: Vace | None = setting(None, why="VACE conditioning")
    motion_bucket: int | None = setting(None, ge=0, le=100, why="speed control: motion strength 0–100")
    vap_video: str | None = setting(None, why="Video-As-Prompt: the reference video whose effect or motion "
                                    "to follow (resampled evenly to [video].frames)")
    vap_prompt: str | None = setting(None, why="Video-As-Prompt: the caption of the reference video")
    negative_vap_prompt: str | None = setting(
        None, family=True, why="Video-As-Prompt: the reference caption of the unconditional pass (the "
        "family's: the authors' negative prompt)")
    s2v_pose_video: str | None = setting(None, why="S2V: a pose video the speaker follows, read at [video].fps "
                                         "(none: zero pose latents, as the release runs)")
    motion_video: str | None = setting(None, why="S2V: 73 frames that come before the video, its first clip's "
                                       "motion context (none: the release's 73 zero frames)")
    audio_sample_rate: int | None = setting(None, family=True, why="S2V: the rate the speech encoder reads "
                                            "(wav2vec2 takes 16000 Hz only; any file is resampled to it)")
    audio_embeds: str | None = setting(None, why="S2V: precomputed speech features used instead of encoding "
                                       "[inputs].audio: a safetensors file whose \"audio_embeds\" is (1, 25, 1024, "
                                       "frames), one bucket per video frame, the clips joined")
    start_from_ref: bool | None = setting(
        None, family=True, why="S2V: the release's --start_from_ref: the reference image (resized and cropped as "
        "the reference) as the last 6 of the 73 zero frames before the video, and the first clip keeps its motion "
        "tokens (false: the release's default, the first clip drops them)")
    num_clip: int | None = setting(None, ge=1, why="S2V: the release's --num_clip: make only the first N clips, the "
                                   "video and its sound cut to them (unset: as many as the recording needs)")
    longcat_video: str | None = setting(None, why="LongCat-Video: the video to continue (its last "
                                        "longcat_cond_frames frames condition the clip)")
    longcat_cond_frames: int = setting(13, family=True, ge=1, why="LongCat-Video: the input video's last frames "
                                       "held as the clip's first frames (4n+1; the authors' 13)")
    longcat_cond_latents: Literal["sample", "mean"] | None = setting(
        None, why="LongCat-Video: the frames held clean (the video's, the image's, the refinement's) as the VAE "
        "posterior's sample (the authors': ε from a generator of [sampler].seed) or its mean (DiffSynth's); none: "
        "the solver's (sample under longcat and longcat-distill, mean under euler; training: mean)")
    longcat_append_to_input: bool = setting(False, why="LongCat-Video continuation: write the whole input video, "
                                            "then the generated frames after the conditioning ones, as the authors' "
                                            "demo saves it (false: the generated clip alone)")
    longcat_resolution: Literal["480p", "720p"] | None = setting(
        None, why="LongCat-Video image-to-video and continuation: [video].width and height from the authors' "
        "480p or 720p size buckets, the one nearest the input's aspect ratio (none: [video].width and height)")
    longcat_segments: int = setting(0, ge=0, why="LongCat-Video: clips chained after the first, each continuing "
                                    "the one before from its last longcat_cond_frames frames (a long video)")
    longcat_segment_prompts: tuple[str, ...] = setting(
        factory=tuple, why="LongCat-Video: one prompt per segment after the first clip (the authors' interactive "
        "video; as many segments as prompts); empty: every segment takes [prompt].text")
    longcat_refine: bool = setting(False, why="LongCat-Video: refine the video to 720p as the authors' "
                                   "generate_refine does (a [[lora]] with target = \"refine\", block-sparse attention)")
    longcat_refine_steps: int = setting(50, ge=1, why="LongCat-Video refinement: the authors' 50-step grid, of which "
                                        "the steps below longcat_refine_strength run")
    longcat_refine_strength: float = setting(0.5, gt=0, le=1, why="LongCat-Video refinement: the noise level the "
                                             "upscaled video is re-noised to (the authors' t_thresh 0.5)")
    longcat_refine_spatial_only: bool = setting(False, why="LongCat-Video refinement: keep the frame count (false: "
                                                "twice the frames at twice the frame rate, as the authors' default)")
    longcat_refine_width: int = setting(0, ge=0, why="LongCat-Video refinement: 0 (with height 0): the authors' "
                                        "720p size nearest the video's aspect (a multiple of 64)")
    longcat_refine_height: int = setting(0, ge=0, why="LongCat-Video refinement: 0 (with width 0): the authors' "
                                         "720p size nearest the video's aspect (a multiple of 64)")
    animate_mode: str | None = setting(
        None, family=True, why="Animate: \"animation\" moves the reference character as the pose video "
        "does; \"replacement\" puts it into the background video in place of the masked person")
    background_video: str | None = setting(None, why="Animate replacement: the driving video with its "
                                           "person removed (the mask video says where)")
    overlap_frames: int | None = setting(
        None, family=True, why="Animate: the previous clip's last frames that start the next clip of a "
        "long video (1 or 5, the official refert_num)")
    relighting_lora: bool | None = setting(
        None, why="Animate replacement: apply the relighting LoRA (None: yes in replacement mode, as the "
        "official --use_relighting_lora; false: not)")


@attrs.frozen
class Vae:
    tiled: bool = setting(True, why="tiling bounds decode memory, usually the peak of a run")
    tile_size: tuple[int, int] = setting((30, 52), why="(height, width) in latent units, as DiffSynth")
    tile_stride: tuple[int, int] = setting((15, 26), why="half the tile: every pixel is blended")


@attrs.frozen
class Memory:
    policy: Literal["none", "offload", "stream", "disk", "auto"] = setting(
        "auto", why="pick the fastest placement that fits the device")
    limit_gb: float | None = setting(None, gt=0, why="the device (GPU) budget; None: the device's memory")
    host_limit_gb: float | None = setting(
        None, gt=0, why="the host (RAM) budget; None: the machine's memory less 10 % (a CPU run: limit_gb)")
    fp8: bool = setting(False, why="store DiT weights in fp8 (compute in bf16); changes the numbers")


@attrs.frozen
class Runtime:
    device: Literal["auto", "cpu", "cuda"] = setting("auto", why="CUDA when present, else CPU")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", why="bf16 on CUDA, fp32 on CPU (CPU bf16 is slower for small models)")
    attention: str = setting("sdpa", why="torch's fused attention; cudnn, flash3, flash4, sage where they can run, "
                             "plugins add more")
    compile: Literal["none", "blocks"] = setting(
        "none", why="blocks: torch.compile each DiT block (faster steps after a first slow one; may "
        "change the last bits)")
    sparse_attention: Literal["auto", "gather", "flex"] = setting(
        "auto", why="LongCat's 720p refinement: its block-sparse attention by FlexAttention's kernel on CUDA "
        "(\"flex\", nothing gathered), by gathering chunks for SDPA elsewhere (\"gather\"); they round apart")
    fp8_matmul: bool = setting(
        False, why="multiply the DiT's fp8-stored block projections in fp8 (GPUs sm89+; needs [memory].fp8); "
        "pays with compile = \"blocks\", which fuses each token's scaling (14B, H200: 0.87x the compiled "
        "bf16 step; uncompiled about even); changes the numbers")


@attrs.frozen
class Output:
    format: str = setting("mp4", why="H.264 mp4 plays everywhere; plugins add savers (gif…)")
    quality: int = setting(18, ge=0, le=51, why="x264 CRF; 18 is visually lossless")
    png_frames: bool = setting(False, why="also write every frame as PNG for editing")


@attrs.frozen
class ModelSource:
    source: str = setting("", why="modelscope:ORG/REPO@REVISION, or a local file or folder; "
                          "empty: the family's (to change only the dtype)")
    files: tuple[str, ...] = setting(factory=tuple, why="glob patterns inside the source; () = the family's")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = setting("auto", why="compute dtype of this component")
    device: Literal["auto", "cpu"] = setting(
        "auto", why="cpu: run this component on the CPU in a GPU run (the official --t5_cpu)")


@attrs.frozen
class Lora:
    path: str = setting("", why="a LoRA .safetensors file of any trainer (its key dialect is detected)")
    source: str = setting("", why="modelscope:ORG/REPO@REVISION holding the file; empty: `path` is local")
    file: str = setting("", why="with `source`: the file's name (or a glob matching one file) in it")
    scale: float = setting(1.0, why="full strength, as trained")
    target: str = setting("dit", why="the DiT; on A14B both experts (or dit_high_noise / dit_low_noise)")
    scale_high_noise: float | None = setting(
        None, why="A14B only: the high-noise expert's scale (None: `scale`; 0: not applied to it)")
    scale_low_noise: float | None = setting(
        None, why="A14B only: the low-noise expert's scale (None: `scale`; 0: not applied to it)")


@attrs.frozen
class Train:
    """A training stage: the dataset, what is trained and how; see docs/training.md."""

    dataset: str = setting(why="CSV/JSON/JSONL metadata naming videos or images and prompts, or a folder "
                           "of media with .txt captions")
    base_path: str = setting("", why="empty: media paths resolve against the metadata file's folder")
    repeat: int = setting(1, ge=1, why="each sample once per epoch")
    width: int = setting(0, ge=0, why="0 (with height 0): dynamic resolution under max_pixels")
    height: int = setting(0, ge=0, why="0 (with width 0): dynamic resolution under max_pixels")
    max_pixels: int = setting(1024 * 1024, ge=1, why="DiffSynth's default budget for dynamic resolution")
    aspect_ratios: tuple[float, ...] = setting(factory=tuple, why="none: each clip keeps its own aspect")
    frames: int = setting(81, ge=1, why="5 s at 16 fps; a clip trains on the largest 4n+1 that fits")
    frame_buckets: tuple[int, ...] = setting(factory=tuple, why="none: any 4n+1 up to `frames`")
    task: Literal["sft", "direct_distill"] = setting(
        "sft", why="flow-matching fine-tuning; direct_distill trains a few-step sampler on teacher videos")
    method: Literal["lora", "full"] = setting("lora", why="LoRA trains in a fraction of the memory")
    components: tuple[str, ...] = setting(factory=tuple, why="none: the family's DiT (both A14B experts)")
    steps: int = setting(1000, ge=1, why="a short first fine-tune (optimizer steps)")
    learning_rate: float = setting(1e-4, gt=0, why="the usual LoRA rate for Wan")
    weight_decay: float = setting(0.01, ge=0, why="AdamW's decay, DiffSynth's default")
    max_grad_norm: float = setting(0.0, ge=0, why="0: no clipping (DiffSynth clips nothing)")
    batch_size: int = setting(1, ge=1, why="video batches rarely fit more on one GPU")
    gradient_accumulation: int = setting(1, ge=1, why="raise for a larger effective batch")
    lora_rank: int = setting(32, ge=1, why="DiffSynth's default rank for Wan LoRA")
    lora_alpha: float = setting(32.0, gt=0, why="alpha = rank keeps the update scale at 1")
    lora_targets: tuple[str, ...] = setting(("q", "k", "v", "o", "ffn.0", "ffn.2"), family=True,
                                            why="attention and FFN projections of every block")
    lora_init: str = setting("", why="empty: a fresh LoRA (B = 0); else a LoRA file to continue from")
    preset_lora: str = setting("", why="empty: none; else a LoRA merged into the base first "
                               "(differential training)")
    preset_lora_scale: float = setting(1.0, why="the preset LoRA at full strength")
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = setting("adamw", why="the standard choice")
    schedule: Literal["constant", "cosine", "linear"] = setting("constant", why="simple to reason about")
    warmup_steps: int = setting(0, ge=0, why="no warm-up unless asked")
    checkpoint_every: int = setting(250, ge=1, why="lose at most a quarter of a short run")
    seed: int = setting(0, ge=0, why="data order, timesteps and noise are a function of it")
    timestep_range: tuple[float, float] = setting(
        (0.0, 1.0), ge=0, le=1, why="the whole schedule, as fractions counted from the noisiest "
        "(DiffSynth's boundaries: [0, 0.417] is T2V-A14B's high-noise expert)")
    shift: float = setting(5.0, gt=0, why="DiffSynth's training shift for Wan")
    caption_dropout: float = setting(0.0, ge=0, le=1, why="0: every sample learns its caption, as DiffSynth "
                                     "trains; a share > 0 learns the empty prompt instead, which classifier-free "
                                     "guidance needs (0.1 is usual)")
    loss_weighting: Literal["diffsynth", "uniform"] = setting(
        "diffsynth", why="DiffSynth's bell-shaped weight over timesteps")
    validation_prompts: tuple[str, ...] = setting(factory=tuple, why="none: no validation videos")
    validate_every: int = setting(0, ge=0, why="0: validate once, at the end")
    validation_samples: int = setting(0, ge=0, why="0: no held-out samples, no validation loss")
    distribution: Literal["none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = setting(
        "none", why="one process unless asked")
    processes: int = setting(1, ge=1, why="with a distribution: processes to launch (GPUs, or CPU workers)")
    gradient_checkpointing: bool = setting(True, why="trades compute for the memory of 81 frames")
    offload_activations: bool = setting(False, why="keep checkpointed activations on the device")
    export_dialect: str = setting("diffsynth", why="DiffSynth's LoRA keys; `wanflow lora convert` makes others")


@attrs.frozen
class Recipe:
    model: str = setting(why="the family: a registered model preset (`wanflow models` lists them)")
    schema: int = setting(1, ge=1, why="the recipe format version this file was written for")
    name: str = setting("", why="empty: the recipe file's stem names the run archives")
    include: tuple[str, ...] = setting(factory=tuple, why="base recipes merged under this one")
    prompt: Prompt = setting(factory=Prompt, why="table")
    video: Video = setting(factory=Video, why="table")
    sampler: Sampler = setting(factory=Sampler, why="table")
    inputs: Inputs = setting(factory=Inputs, why="table")
    vae: Vae = setting(factory=Vae, why="table")
    memory: Memory = setting(factory=Memory, why="table")
    runtime: Runtime = setting(factory=Runtime, why="table")
    output: Output = setting(factory=Output, why="table")
    models: Mapping[str, ModelSource] = setting(factory=dict, why="overrides of family components")
    lora: tuple[Lora, ...] = setting(factory=tuple, why="LoRAs applied in order")
    sweep: Mapping[str, tuple[Any, ...]] = setting(factory=dict, why="dotted key -> values; jobs = product")
    train: Train | None = setting(None, why="no training stage unless declared")


#: Input fields whose values are file paths (checked for existence, digested by the engine).
FILE_INPUTS = ("image", "end_image", "video", "control_video", "reference_image", "mask", "audio",
               "pose_video", "face_video", "vace.video", "vace.mask", "vace.reference",
               "camera.pose_file", "vap_video", "s2v_pose_video", "motion_video",
               "audio_embeds", "longcat_video", "background_video")
#: Input fields whose values are texts a family encodes besides the prompt (Video-As-Prompt's captions).
TEXT_INPUTS = ("vap_prompt", "negative_vap_prompt")
