"""The official Wan2.1 / Wan2.2 releases as families, with their official defaults.

Values follow the official generate scripts and configs (steps, shift, guidance, frames, fps,
negative prompts, sizes); where DiffSynth differs (Euler, shift 5, empty negative prompt) a
recipe can say so.
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec

#: The official shared negative prompt (Wan2.1 and Wan2.2 `sample_neg_prompt`).
NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
            "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
            "杂乱的背景，三条腿，背景人很多，倒着走")
DIT_FILES = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json", "config.json")
T2V_SIZES_14B = ((1280, 720), (720, 1280), (832, 480), (480, 832))

#: How each kind of release conditions its DiT (besides the text). Every family can start from
#: an input video or image kept with [sampler].denoising_strength < 1.
SOURCE = conditioner("source-latent")
TEXT = (SOURCE,)
I2V_CLIP = (conditioner("clip-tokens"), conditioner("image-channels"), SOURCE)  # Wan2.1 I2V, FLF2V
I2V = (conditioner("image-channels"), SOURCE)  # Wan2.2 I2V-A14B: no CLIP
TI2V = (conditioner("first-frame-latent"), SOURCE)  # the image's latent is the first frame


def _shared(repo: str, vae: str = "Wan2.1_VAE.pth") -> dict[str, ComponentSpec]:
    src = f"modelscope:Wan-AI/{repo}"
    return {
        "text_encoder": ComponentSpec("text_encoder", src, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
        "tokenizer": ComponentSpec("tokenizer", src, ("google/umt5-xxl/*",), "umt5-xxl"),
        "vae": ComponentSpec("vae", src, (vae,), "wan2.2-vae" if "2.2" in vae else "wan2.1-vae"),
    }


def _dit(repo: str, arch: str, folder: str = "") -> ComponentSpec:
    files = tuple(f"{folder}/{f}" if folder else f for f in DIT_FILES)
    return ComponentSpec("dit", f"modelscope:Wan-AI/{repo}", files, arch)


def _clip(repo: str) -> dict[str, ComponentSpec]:
    return {"image_encoder": ComponentSpec("image_encoder", f"modelscope:Wan-AI/{repo}",
                                           ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",),
                                           "clip-vit-h-14")}


def _defaults(width: int, height: int, steps: int, shift: float, cfg: float, negative: str = NEGATIVE,
              frames: int = 81, fps: int = 16, **extra: object) -> dict[str, object]:
    return {"video.width": width, "video.height": height, "video.frames": frames, "video.fps": fps,
            "sampler.solver": "unipc", "sampler.steps": steps, "sampler.shift": shift, "sampler.cfg": cfg,
            "prompt.negative": negative, **{f"sampler.{k}": v for k, v in extra.items()}}


def _t2v(name: str, repo: str, arch: str, width: int, height: int, sizes: tuple) -> FamilySpec:
    return FamilySpec(name, f"Wan2.1 text-to-video ({repo})", {"dit": _dit(repo, arch), **_shared(repo)},
                      _defaults(width, height, 50, 5.0, 5.0), frozenset({"video"}), sizes=sizes,
                      conditioners=TEXT)


def _i2v21(name: str, repo: str, width: int, height: int, shift: float) -> FamilySpec:
    return FamilySpec(name, f"Wan2.1 image-to-video ({repo})",
                      {"dit": _dit(repo, "wan2.1-i2v-14b"), **_shared(repo), **_clip(repo)},
                      _defaults(width, height, 40, shift, 5.0, "镜头晃动，" + NEGATIVE),
                      frozenset({"image"}), frozenset({"image"}), sizes=T2V_SIZES_14B, conditioners=I2V_CLIP)


def families() -> list[FamilySpec]:
    """Every official family this wanflow knows."""
    a14b_t = "Wan2.2-T2V-A14B"
    a14b_i = "Wan2.2-I2V-A14B"
    experts = ("dit_high_noise", "dit_low_noise")
    return [
        _t2v("wan2.1-t2v-1.3b", "Wan2.1-T2V-1.3B", "wan2.1-t2v-1.3b", 832, 480, ((832, 480), (480, 832))),
        _t2v("wan2.1-t2v-14b", "Wan2.1-T2V-14B", "wan2.1-t2v-14b", 1280, 720, T2V_SIZES_14B),
        _i2v21("wan2.1-i2v-14b-480p", "Wan2.1-I2V-14B-480P", 832, 480, 3.0),
        _i2v21("wan2.1-i2v-14b-720p", "Wan2.1-I2V-14B-720P", 1280, 720, 5.0),
        FamilySpec("wan2.1-flf2v-14b-720p", "Wan2.1 first-last-frame-to-video (Wan2.1-FLF2V-14B-720P)",
                   {"dit": _dit("Wan2.1-FLF2V-14B-720P", "wan2.1-flf2v-14b"), **_shared("Wan2.1-FLF2V-14B-720P"),
                    **_clip("Wan2.1-FLF2V-14B-720P")},
                   _defaults(1280, 720, 50, 16.0, 5.0, "镜头切换，" + NEGATIVE),
                   frozenset({"image", "end_image"}), frozenset({"image", "end_image"}), sizes=T2V_SIZES_14B,
                   conditioners=I2V_CLIP),
        FamilySpec("wan2.2-t2v-a14b", "Wan2.2 text-to-video, two 14B experts (Wan2.2-T2V-A14B)",
                   {"dit_high_noise": _dit(a14b_t, "wan2.2-t2v-a14b", "high_noise_model"),
                    "dit_low_noise": _dit(a14b_t, "wan2.2-t2v-a14b", "low_noise_model"), **_shared(a14b_t)},
                   _defaults(1280, 720, 40, 12.0, 3.0, cfg_high_noise=4.0, boundary=0.875),
                   frozenset({"video"}), sizes=T2V_SIZES_14B, experts=experts, conditioners=TEXT),
        FamilySpec("wan2.2-i2v-a14b", "Wan2.2 image-to-video, two 14B experts (Wan2.2-I2V-A14B)",
                   {"dit_high_noise": _dit(a14b_i, "wan2.2-i2v-a14b", "high_noise_model"),
                    "dit_low_noise": _dit(a14b_i, "wan2.2-i2v-a14b", "low_noise_model"), **_shared(a14b_i)},
                   _defaults(1280, 720, 40, 5.0, 3.5, cfg_high_noise=3.5, boundary=0.9),
                   frozenset({"image"}), frozenset({"image"}), sizes=T2V_SIZES_14B, experts=experts,
                   conditioners=I2V),
        FamilySpec("wan2.2-ti2v-5b", "Wan2.2 text/image-to-video 5B with the 4×16×16 VAE (Wan2.2-TI2V-5B)",
                   {"dit": _dit("Wan2.2-TI2V-5B", "wan2.2-ti2v-5b"), **_shared("Wan2.2-TI2V-5B", "Wan2.2_VAE.pth")},
                   _defaults(1280, 704, 50, 5.0, 5.0, frames=121, fps=24),
                   frozenset({"image", "video"}), spatial_factor=32, sizes=((1280, 704), (704, 1280)),
                   conditioners=TI2V),
    ]
