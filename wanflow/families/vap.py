"""Video-As-Prompt (ByteDance/Video-As-Prompt-Wan2.1-14B) as a family, with its authors' defaults.

A Wan2.1 I2V-14B generation prompted by a reference video: the start image and the prompt say
what to show, the reference video (``[inputs].vap_video``, captioned by ``vap_prompt``) says
what should happen, the way it happens there. The release holds one DiT (``transformer/``, the
frozen I2V DiT and its mixture-of-transformers reference stream, diffusers-named and sharded);
the umT5, VAE and CLIP are Wan2.1-I2V-14B's own files, read from Wan-AI/Wan2.1-I2V-14B-720P as
DiffSynth does.

Defaults are the authors' (``infer/wan_vap.py`` and their pipeline): 832×480, 49 frames at 16
fps, 50 steps, guidance 5, the English negative prompt for the prompt and for the reference
caption, flow-matching Euler. The flow shift 5.0 is DiffSynth's example's (the authors' own
scheduler configuration ships with the weights).
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.fun import CLIP_FILE
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.wan import SOURCE

REPO = "ByteDance/Video-As-Prompt-Wan2.1-14B"
#: Where its umT5, VAE and CLIP come from: the Wan2.1 I2V-14B files it was trained on.
ENCODERS = "Wan2.1-I2V-14B-720P"
#: The released DiT: shards behind an index, with the diffusers config, in ``transformer/``.
DIT_FILES = tuple(f"transformer/{f}" for f in (
    "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json", "config.json"))
#: The authors' negative prompt, for the main prompt and the reference caption alike
#: (``pipeline_wan_i2v_mot.py``: the English wording of Wan's own).
NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
            "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
            "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
            "fused fingers, still picture, messy background, three legs, many people in the background, "
            "walking backwards")

#: The main stream is Wan2.1 I2V (CLIP tokens and I2V channels of the start image); the
#: reference stream reads the reference video and its two captions.
CONDITIONERS = (conditioner("clip-tokens"), conditioner("image-channels"), SOURCE, conditioner("vap-video"),
                conditioner("vap-prompt"), conditioner("vap-negative-prompt"))
DEFAULTS = {"video.width": 832, "video.height": 480, "video.frames": 49, "video.fps": 16,
            "sampler.solver": "euler", "sampler.steps": 50, "sampler.cfg": 5.0, "sampler.shift": 5.0,
            "prompt.negative": NEGATIVE, "inputs.negative_vap_prompt": NEGATIVE}


def _encoders() -> dict[str, ComponentSpec]:
    """umT5, its tokenizer, the Wan2.1 VAE and CLIP, from the Wan2.1 I2V repository."""
    src = f"modelscope:Wan-AI/{ENCODERS}"
    return {"text_encoder": ComponentSpec("text_encoder", src, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
            "tokenizer": ComponentSpec("tokenizer", src, ("google/umt5-xxl/*",), "umt5-xxl"),
            "vae": ComponentSpec("vae", src, ("Wan2.1_VAE.pth",), "wan2.1-vae"),
            "image_encoder": ComponentSpec("image_encoder", src, (CLIP_FILE,), "clip-vit-h-14")}


#: How full fine-tuning exports (``FamilySpec.full_export``): the trained reference stream merged
#: over the base's files, in the release's layout (``steps/train_vap_export.py``).
FULL_EXPORT = "video-as-prompt-release"


def family() -> FamilySpec:
    """Video-As-Prompt-Wan2.1-14B."""
    dit = ComponentSpec("dit", f"modelscope:{REPO}", DIT_FILES, "video-as-prompt-wan2.1-14b")
    return FamilySpec(
        "video-as-prompt-wan2.1-14b",
        f"Wan2.1 I2V-14B prompted by a reference video: its effect or motion, on the start image ({REPO})",
        {"dit": dit, **_encoders()}, DEFAULTS,
        frozenset({"image", "vap_video", "vap_prompt", "negative_vap_prompt"}),
        frozenset({"image", "vap_video", "vap_prompt"}), sizes=((832, 480), (480, 832)), conditioners=CONDITIONERS,
        full_export=FULL_EXPORT)


def families() -> list[FamilySpec]:
    """The one Video-As-Prompt release built on Wan."""
    return [family()]
