"""The Wan-Fun releases (Alibaba PAI) and DiffSynth's speed control as families, with their authors' defaults.

Wan-Fun is the Wan DiT with more input channels and, from V1.1, a reference-image convolution
or a camera adapter: InP (start and/or end frame), Control (a depth/pose/canny video, V1.1 and
Wan2.2 also a reference image) and Control-Camera (a start frame moved by camera poses). Their
defaults are the authors' (VideoX-Fun's example scripts and configs): 50 steps, guidance 6.0,
flow shift 5.0, 832x480 (the Wan2.1 Control examples 480x832 and 49 frames), and for Wan2.2 A14B
the experts switching at 0.900, sampled with their "Flow" sampler (solver "flow": flow-matching
Euler on diffusers' FlowMatchEulerDiscreteScheduler grid). DiffSynth samples the same models with
Euler on its own grid (solver "euler": same shift, other intermediate σ).

Speed control is DiffSynth's: Wan2.1-T2V-1.3B unchanged plus a motion controller file, with
DiffSynth's example settings (Euler, 50 steps, guidance 5, shift 5).
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.wan import DIT_FILES, NEGATIVE, SOURCE

#: The authors' sampler settings (VideoX-Fun ``predict_*.py`` and ``config/wan2.*/*.yaml``).
FUN_SAMPLING = {"sampler.solver": "flow", "sampler.steps": 50, "sampler.cfg": 6.0, "sampler.shift": 5.0}
#: Expert switch of the Wan2.2 Fun A14B models (VideoX-Fun ``wan_civitai_i2v.yaml``; DiffSynth keeps 0.875).
FUN_A14B_BOUNDARY = 0.900
SIZES_1_3B = ((832, 480), (480, 832))
SIZES_14B = ((1280, 720), (720, 1280), (832, 480), (480, 832))
EXPERTS = ("dit_high_noise", "dit_low_noise")
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
#: The umT5 tokenizer every Wan model shares; DiffSynth reads it from this repository for all.
TOKENIZER = ComponentSpec("tokenizer", "modelscope:Wan-AI/Wan2.1-T2V-1.3B", ("google/umt5-xxl/*",), "umt5-xxl")

# How each kind of Fun model is conditioned (docs/fun.md). Fun 2.1 encodes CLIP tokens (zeros
# without an image); every family can start from a kept input ([sampler].denoising_strength < 1).
_CLIP_FIRST = conditioner("clip-tokens", images="first", without_image="zeros")
_CLIP_REFERENCE = conditioner("clip-tokens", images="reference", without_image="zeros")
_IMAGE = conditioner("image-channels", without_image="zeros")
_CONTROL, _START = conditioner("control-latents"), conditioner("start-latent")
_REFERENCE, _CAMERA = conditioner("reference-latent"), conditioner("camera-plucker")
CONDITIONERS = {
    "inp": (_CLIP_FIRST, _IMAGE, SOURCE),
    "control": (_CLIP_FIRST, _CONTROL, _START, SOURCE),
    "v1.1-control": (_CLIP_REFERENCE, _CONTROL, _START, _REFERENCE, SOURCE),
    "v1.1-control-camera": (_CLIP_FIRST, _START, _CAMERA, SOURCE),
    "a14b-inp": (_IMAGE, SOURCE),
    "a14b-control": (_CONTROL, _IMAGE, _REFERENCE, SOURCE),
    "a14b-control-camera": (_IMAGE, _CAMERA, SOURCE),
}
#: (accepted, required) inputs of each kind.
INPUTS = {
    "inp": ({"image", "end_image", "video"}, set()),
    "control": ({"control_video", "image", "video"}, {"control_video"}),
    "v1.1-control": ({"control_video", "image", "reference_image", "video"}, {"control_video"}),
    "v1.1-control-camera": ({"camera", "image", "video"}, {"camera", "image"}),
}
INPUTS |= {"a14b-inp": INPUTS["inp"], "a14b-control": INPUTS["v1.1-control"],
           "a14b-control-camera": INPUTS["v1.1-control-camera"]}
WHAT = {"inp": "start/end frame to video", "control": "control video to video",
        "control-camera": "camera-controlled image to video"}


def _encoders(repo: str, clip: bool) -> dict[str, ComponentSpec]:
    src = f"modelscope:PAI/{repo}"
    out = {"text_encoder": ComponentSpec("text_encoder", src, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
           "tokenizer": TOKENIZER, "vae": ComponentSpec("vae", src, ("Wan2.1_VAE.pth",), "wan2.1-vae")}
    if clip:
        out["image_encoder"] = ComponentSpec("image_encoder", src, (CLIP_FILE,), "clip-vit-h-14")
    return out


def _dit(repo: str, architecture: str, folder: str = "") -> ComponentSpec:
    files = tuple(f"{folder}/{f}" if folder else f for f in DIT_FILES)
    return ComponentSpec("dit", f"modelscope:PAI/{repo}", files, architecture)


def _defaults(kind: str, **extra: object) -> dict[str, object]:
    portrait = kind in ("control", "v1.1-control")  # the Wan2.1 Control examples: 480x832, 49 frames
    return {"video.width": 480 if portrait else 832, "video.height": 832 if portrait else 480,
            "video.frames": 49 if portrait else 81, "video.fps": 16, "prompt.negative": NEGATIVE,
            **FUN_SAMPLING, **extra}


def _fun21(version: str, size: str, kind: str) -> FamilySpec:
    """A Wan2.1-Fun model: ``version`` "" (V1.0) or "v1.1", ``size`` "1.3b" or "14b"."""
    repo = "Wan2.1-Fun-" + ("V1.1-" if version else "") + size.upper() + "-" + {
        "inp": "InP", "control": "Control", "control-camera": "Control-Camera"}[kind]
    prefix = "wan2.1-fun" + (f"-{version}" if version else "")
    name = f"{prefix}-{size}-{kind}"
    architecture = f"{prefix}-{kind}-{size}"
    key = f"v1.1-{kind}" if version and kind != "inp" else kind
    accepted, required = INPUTS[key]
    return FamilySpec(name, f"Wan2.1-Fun {version.upper() or 'V1.0'} {size.upper()}, {WHAT[kind]} (PAI/{repo})",
                      {"dit": _dit(repo, architecture), **_encoders(repo, clip=True)}, _defaults(key),
                      frozenset(accepted), frozenset(required),
                      sizes=SIZES_1_3B if size == "1.3b" else SIZES_14B, conditioners=CONDITIONERS[key])


def _fun22(kind: str) -> FamilySpec:
    """A Wan2.2-Fun A14B model: two experts in ``high_noise_model/`` and ``low_noise_model/``."""
    repo = "Wan2.2-Fun-A14B-" + {"inp": "InP", "control": "Control", "control-camera": "Control-Camera"}[kind]
    architecture = f"wan2.2-fun-{kind}-a14b"
    accepted, required = INPUTS[f"a14b-{kind}"]
    dits = {e: _dit(repo, architecture, f"{e.removeprefix('dit_')}_model") for e in EXPERTS}
    return FamilySpec(f"wan2.2-fun-a14b-{kind}", f"Wan2.2-Fun A14B, {WHAT[kind]}, two 14B experts (PAI/{repo})",
                      {**dits, **_encoders(repo, clip=False)},
                      _defaults(f"a14b-{kind}", **{"sampler.boundary": FUN_A14B_BOUNDARY}),
                      frozenset(accepted), frozenset(required), sizes=SIZES_14B, experts=EXPERTS,
                      conditioners=CONDITIONERS[f"a14b-{kind}"])


def speed_control() -> FamilySpec:
    """DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1: the base T2V 1.3B plus its motion controller."""
    base = "modelscope:Wan-AI/Wan2.1-T2V-1.3B"
    components = {
        "dit": ComponentSpec("dit", base, DIT_FILES, "wan2.1-t2v-1.3b"),
        "text_encoder": ComponentSpec("text_encoder", base, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
        "tokenizer": TOKENIZER,
        "vae": ComponentSpec("vae", base, ("Wan2.1_VAE.pth",), "wan2.1-vae"),
        "motion_controller": ComponentSpec("motion_controller",
                                           "modelscope:DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1",
                                           ("model.safetensors",), "wan2.1-motion-controller"),
    }
    defaults = {"video.width": 832, "video.height": 480, "video.frames": 81, "video.fps": 16,
                "prompt.negative": NEGATIVE, "sampler.solver": "euler", "sampler.steps": 50,
                "sampler.cfg": 5.0, "sampler.shift": 5.0}
    return FamilySpec("wan2.1-1.3b-speedcontrol", "Wan2.1-T2V-1.3B with DiffSynth's speed control "
                      "(DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1): [inputs].motion_bucket 0 slow … 100 fast",
                      components, defaults, frozenset({"motion_bucket", "video"}), frozenset({"motion_bucket"}),
                      sizes=SIZES_1_3B, conditioners=(conditioner("motion-bucket"), SOURCE),
                      trainable_parts=("motion_controller",))


def families() -> list[FamilySpec]:
    """The thirteen Wan-Fun models and the speed-control release."""
    wan21 = [_fun21(version, size, kind) for version, kinds in (("", ("inp", "control")),
                                                                 ("v1.1", ("inp", "control", "control-camera")))
             for size in ("1.3b", "14b") for kind in kinds]
    return [*wan21, *(_fun22(kind) for kind in ("inp", "control", "control-camera")), speed_control()]
