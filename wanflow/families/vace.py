"""The VACE releases as families: a Wan text-to-video DiT steered by a VACE context.

Four releases share one conditioner (``vace-context``: video, mask and reference images from
``[inputs.vace]``) and the Wan2.1 VAE; they differ in size, files and defaults:

- iic/VACE-Wan2.1-1.3B-Preview and Wan-AI/Wan2.1-VACE-1.3B: one file holding the 1.3B DiT and
  its 15 VACE blocks; Wan-AI/Wan2.1-VACE-14B: the 14B DiT and 8 VACE blocks in 7 shards. The
  VACE authors (and the Wan2.1 generate script) sample them with UniPC, shift 16, 50 steps,
  guidance 5, 81 frames at 16 fps.
- PAI/Wan2.2-VACE-Fun-A14B: two experts, each a Wan2.1-VACE-14B-shaped DiT (its own VACE
  blocks) under ``high_noise_model/`` and ``low_noise_model/``; its authors (VideoX-Fun) sample
  with their "Flow" sampler (solver "flow"), shift 12, guidance 5, 50 steps, 832×480, switching
  experts at 0.875.

The denoiser's noise covers the reference frames as one draw of the whole latent, references
first (the VACE authors' and diffusers' order), so no family here starts from a kept source.
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.wan import DIT_FILES, NEGATIVE, T2V_SIZES_14B

#: Every VACE release is conditioned by the VACE context alone (besides the text).
VACE = (conditioner("vace-context"),)
SIZES_1_3B = ((832, 480), (480, 832))
EXPERTS = ("dit_high_noise", "dit_low_noise")


def _encoders(source: str) -> dict[str, ComponentSpec]:
    """umT5, its tokenizer and the Wan2.1 VAE, from the release's own repository."""
    return {
        "text_encoder": ComponentSpec("text_encoder", source, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
        "tokenizer": ComponentSpec("tokenizer", source, ("google/umt5-xxl/*",), "umt5-xxl"),
        "vae": ComponentSpec("vae", source, ("Wan2.1_VAE.pth",), "wan2.1-vae"),
    }


def _dit(source: str, architecture: str, folder: str = "") -> ComponentSpec:
    files = tuple(f"{folder}/{f}" if folder else f for f in DIT_FILES)
    return ComponentSpec("dit", source, files, architecture)


def _defaults(width: int, height: int, solver: str, shift: float, **extra: object) -> dict[str, object]:
    return {"video.width": width, "video.height": height, "video.frames": 81, "video.fps": 16,
            "sampler.solver": solver, "sampler.steps": 50, "sampler.shift": shift, "sampler.cfg": 5.0,
            "prompt.negative": NEGATIVE, **{f"sampler.{k}": v for k, v in extra.items()}}


def _wan21(name: str, repo: str, architecture: str, width: int, height: int, sizes: tuple) -> FamilySpec:
    source = f"modelscope:{repo}"
    return FamilySpec(name, f"Wan2.1 VACE: text, video, mask and reference images to video ({repo})",
                      {"dit": _dit(source, architecture), **_encoders(source)},
                      _defaults(width, height, "unipc", 16.0), frozenset({"vace"}), sizes=sizes,
                      conditioners=VACE)


def families() -> list[FamilySpec]:
    """The four VACE releases."""
    fun = "modelscope:PAI/Wan2.2-VACE-Fun-A14B"
    return [
        _wan21("wan2.1-vace-1.3b-preview", "iic/VACE-Wan2.1-1.3B-Preview", "wan2.1-vace-1.3b", 832, 480,
               SIZES_1_3B),
        _wan21("wan2.1-vace-1.3b", "Wan-AI/Wan2.1-VACE-1.3B", "wan2.1-vace-1.3b", 832, 480, SIZES_1_3B),
        _wan21("wan2.1-vace-14b", "Wan-AI/Wan2.1-VACE-14B", "wan2.1-vace-14b", 1280, 720, T2V_SIZES_14B),
        FamilySpec("wan2.2-vace-fun-a14b", "Wan2.2 VACE-Fun, two 14B experts (PAI/Wan2.2-VACE-Fun-A14B)",
                   {"dit_high_noise": _dit(fun, "wan2.2-vace-fun-a14b", "high_noise_model"),
                    "dit_low_noise": _dit(fun, "wan2.2-vace-fun-a14b", "low_noise_model"), **_encoders(fun)},
                   _defaults(832, 480, "flow", 12.0, boundary=0.875), frozenset({"vace"}),
                   sizes=T2V_SIZES_14B, experts=EXPERTS, conditioners=VACE),
    ]
