"""Tiny seeded Wan2.2-Animate DiTs under the released key names, and diffusers' model on them.

The motion encoder's weights are randn (std 1): its layers scale them by 1/sqrt(fan_in) at run
time, so the 0.1 used elsewhere would shrink the signal 10x per layer and leave an output that
no longer depends on the face. Everything else is randn * 0.1 as in ``_dit_fixtures``.

diffusers' Animate model is imported here, when the tests are collected: a test that imports
DiffSynth with a stand-in torchvision leaves that stand-in in ``sys.modules``, and diffusers'
lazy import of the model module fails after it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import WanAnimateTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file
from torch import Tensor

from wanflow.models.animate import AnimateDiT
from wanflow.models.animate_config import AnimateConfig, MotionEncoderConfig
from wanflow.models.animate_motion import blur_kernel
from wanflow.models.dit_config import DitConfig
from wanflow.models.loading import build_on_meta

#: The face crop size of the tiny models (the release: 512).
FACE_SIZE = 16


def tiny_config(num_layers: int = 5, size: int = FACE_SIZE, widths=(8, 16, 16)) -> AnimateConfig:
    """dim 128 (2 heads of 64), a 16-px motion encoder of widths 8/16/16, face encoder 24 x 4."""
    dit = DitConfig("i2v", dim=128, ffn_dim=256, num_heads=2, num_layers=num_layers, in_dim=36, out_dim=16,
                    clip=True)
    motion = MotionEncoderConfig(size=size, widths=tuple(widths), style_dim=32, motion_dim=6, direction_dim=32)
    return AnimateConfig(dit, motion, face_hidden_dim=24, face_heads=4)


def seeded_state(cfg: AnimateConfig, seed: int = 0) -> dict[str, Tensor]:
    """Official-layout weights from one seeded generator; the blur kernels are the fixed ones."""
    meta = build_on_meta(lambda: AnimateDiT(cfg)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in sorted(meta.items()):
        if key.endswith(".kernel"):
            state[key] = blur_kernel()
            continue
        unit = key.startswith("motion_encoder.enc.") and key.endswith(".weight")
        state[key] = torch.randn(value.shape, generator=gen) * (1.0 if unit else 0.1)
    return state


def model_of(cfg: AnimateConfig, state: dict[str, Tensor]) -> AnimateDiT:
    model = AnimateDiT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def diffusers_layout(cfg: AnimateConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers' names from diffusers' own converter, which hard-codes the released encoder: the
    blur kernels (which it rebuilds) are dropped and the last conv is renamed ``convs.8`` first."""
    last = f"motion_encoder.enc.net_app.convs.{cfg.motion.final_conv}.weight"
    state = {("motion_encoder.enc.net_app.convs.8.weight" if k == last else k): v.clone()
             for k, v in state.items() if not k.endswith(".kernel")}
    return convert_wan_transformer_to_diffusers(state)


def diffusers_config(cfg: AnimateConfig) -> dict:
    """``WanAnimateTransformer3DModel`` arguments for the same architecture."""
    d, m = cfg.dit, cfg.motion
    return {
        "num_attention_heads": d.num_heads, "attention_head_dim": d.head_dim, "in_channels": d.in_dim,
        "latent_channels": d.out_dim, "out_channels": d.out_dim, "text_dim": d.text_dim, "freq_dim": d.freq_dim,
        "ffn_dim": d.ffn_dim, "num_layers": d.num_layers, "image_dim": 1280, "added_kv_proj_dim": d.dim,
        "motion_encoder_channel_sizes": {str(m.size >> i): w for i, w in enumerate(m.widths)},
        "motion_encoder_size": m.size, "motion_style_dim": m.style_dim, "motion_dim": m.motion_dim,
        "motion_encoder_dim": m.direction_dim, "face_encoder_hidden_dim": cfg.face_hidden_dim,
        "face_encoder_num_heads": cfg.face_heads,
    }


def diffusers_model(cfg: AnimateConfig, state: dict[str, Tensor]):
    """diffusers' WanAnimateTransformer3DModel holding the same weights (loaded strictly)."""
    model = WanAnimateTransformer3DModel(**diffusers_config(cfg))
    model.load_state_dict(diffusers_layout(cfg, state), strict=True)
    return model.eval()


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(cfg: AnimateConfig, seed: int = 1, batch: int = 1, frames: int = 3, size=(8, 8)) -> dict:
    """Seeded inputs: x, y, t < 500 (see ``_dit_fixtures.inputs``), a 512-token text context,
    CLIP tokens, pose latents for frames 1.., and the clip's 4(F-2)+1 face crops in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    d = cfg.dit
    grid = (frames, *size)
    faces = 4 * (frames - 2) + 1
    return {
        "x": torch.randn(batch, d.out_dim, *grid, generator=gen),
        "y": torch.randn(batch, d.in_dim - d.out_dim, *grid, generator=gen),
        "t": torch.randint(0, 500, (batch,), generator=gen).float(),
        "context": torch.randn(batch, d.text_len, d.text_dim, generator=gen),
        "clip_fea": torch.randn(batch, 257, 1280, generator=gen),
        "pose": torch.randn(batch, d.out_dim, frames - 1, *size, generator=gen),
        "face": torch.rand(batch, 3, faces, cfg.motion.size, cfg.motion.size, generator=gen) * 2 - 1,
    }


def write_checkpoint(folder: Path, state: dict[str, Tensor], shards: int = 1) -> Path:
    """One safetensors file, or ``shards`` files round-robin with their index json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if shards == 1:
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(state, str(path))
        return path
    keys = sorted(state)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {k: names[i % shards] for i, k in enumerate(keys)}
    for name in names:
        save_file({k: state[k] for k in keys if weight_map[k] == name}, str(folder / name))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def official_modules():
    """DiffSynth's copy of the official Animate modules, loaded from its file alone."""
    spec = importlib.util.find_spec("diffsynth")
    if spec is None:
        pytest.skip("DiffSynth is not installed (pip install --no-deps diffsynth==2.1.12)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "wan_video_animate_adapter.py"
    module_spec = importlib.util.spec_from_file_location("diffsynth_wan_animate_adapter", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
