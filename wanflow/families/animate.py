"""Wan2.2-Animate-14B as a family: a character image moved by a pose video and a face video.

Two modes (``[inputs].animate_mode``): "animation" generates the reference character doing what
the pose and face videos do; "replacement" puts it into the background video
(``[inputs].background_video``) where the mask video (``[inputs].mask``, white = the person to
replace) says, with the relighting LoRA applied to the DiT as the official
``--use_relighting_lora`` does. Videos longer than one clip of 77 frames run as several clips,
each started by the previous clip's last ``[inputs].overlap_frames`` frames (the official
``refert_num``). Its steps are built by ``wanflow.steps.pipeline_animate``.

Everything comes from one repository, Wan-AI/Wan2.2-Animate-14B: the DiT and its animate parts
(sharded, with its index and config.json), umT5, the Wan2.1 VAE, CLIP, and
``relighting_lora.ckpt``. Defaults are the official configuration (``wan_animate_14B.py``):
20 steps, shift 5, guidance 1, UniPC (the command line's solver), 30 fps, clips of 77 frames,
its Chinese prompt and negative prompt; 1280×720 is the size its preprocessing writes.
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.fun import CLIP_FILE
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.wan import DIT_FILES, NEGATIVE

NAME = "wan2.2-animate-14b"
REPO = "Wan-AI/Wan2.2-Animate-14B"
#: The pipeline that builds this family's steps (``wanflow.steps.pipeline_animate``).
PIPELINE = "animate"
MODES = ("animation", "replacement")
#: Frames of one clip (the official ``frame_num``): 20 latent frames, plus the reference's.
CLIP_FRAMES = 77
#: The previous clip's frames a clip may start from (the official code asserts refert_num ∈ {1, 5}).
OVERLAPS = (1, 5)
RELIGHTING_FILE = "relighting_lora.ckpt"
#: The official prompt (``wan_animate_14B.py``: "the person in the video is moving").
PROMPT = "视频中的人在做动作"
#: Inputs only replacement mode reads.
REPLACEMENT_INPUTS = ("background_video", "mask")

#: Its inputs, each a conditioner kind; the clip loop builds the condition channels from the
#: reference latent, the background and mask, and the previous clip's frames.
CONDITIONERS = tuple(conditioner(f"animate-{kind}") for kind in ("reference", "pose", "face", "background", "mask"))
DEFAULTS = {"video.width": 1280, "video.height": 720, "video.frames": CLIP_FRAMES, "video.fps": 30,
            "sampler.solver": "unipc", "sampler.steps": 20, "sampler.cfg": 1.0, "sampler.shift": 5.0,
            "prompt.negative": NEGATIVE, "inputs.animate_mode": "animation", "inputs.overlap_frames": 1}


def family() -> FamilySpec:
    """Wan2.2-Animate-14B."""
    src = f"modelscope:{REPO}"
    components = {
        "dit": ComponentSpec("dit", src, DIT_FILES, NAME),
        "text_encoder": ComponentSpec("text_encoder", src, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
        "tokenizer": ComponentSpec("tokenizer", src, ("google/umt5-xxl/*",), "umt5-xxl"),
        "vae": ComponentSpec("vae", src, ("Wan2.1_VAE.pth",), "wan2.1-vae"),
        "image_encoder": ComponentSpec("image_encoder", src, (CLIP_FILE,), "clip-vit-h-14"),
        "relighting_lora": ComponentSpec("lora", src, (RELIGHTING_FILE,), "wan2.2-animate-relighting"),
    }
    accepted = frozenset({"reference_image", "pose_video", "face_video", "animate_mode", "overlap_frames",
                          "relighting_lora", *REPLACEMENT_INPUTS})
    return FamilySpec(
        NAME, f"a character image animated by a pose and a face video, or put into a video in place of "
        f"its person ({REPO})", components, DEFAULTS, accepted,
        frozenset({"reference_image", "pose_video", "face_video"}), sizes=((1280, 720), (720, 1280)),
        pipeline=PIPELINE, conditioners=CONDITIONERS)


def families() -> list[FamilySpec]:
    """The one Animate release."""
    return [family()]
