"""Tiny derivative DiTs (VACE, Wan-Fun) under their released key names, and the references.

DiffSynth (``pip install --no-deps diffsynth==2.1.12``) is imported with an inert stand-in for
torchvision where torchvision is missing: its package imports it for data loaders and the CLIP
encoder, which these checks never run.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import types

import attrs
import pytest
import torch
from torch import Tensor

from ._dit_fixtures import diffusers_config_json, random_state, tiny_config

#: The released head width, which DiffSynth's RoPE table assumes.
WAN_HEAD_DIM = 128


def vace_config(layers: int = 4, vace_layers=(0, 2), **overrides):
    """A tiny VACE DiT: T2V with VACE blocks after main blocks ``vace_layers``."""
    return attrs.evolve(tiny_config("t2v"), num_layers=layers, vace_layers=tuple(vace_layers), **overrides)


def fun_config(kind: str, head_dim: int = 64):
    """Tiny Wan-Fun DiTs: 'inp' (36, CLIP), 'control' (48, CLIP), 'v11-control' (48, CLIP,
    ref_conv), 'camera' (32, CLIP, adapter 24), 'a14b-control' (52, ref_conv, no CLIP).
    DiffSynth's RoPE table needs the released head width, 128."""
    i2v = tiny_config("i2v", dim=2 * head_dim)
    return {
        "inp": i2v,
        "control": attrs.evolve(i2v, in_dim=48),
        "v11-control": attrs.evolve(i2v, in_dim=48, ref_conv=True),
        "camera": attrs.evolve(i2v, in_dim=32, camera_in_dim=24),
        "a14b-control": attrs.evolve(i2v, in_dim=52, clip=False, ref_conv=True),
    }[kind]


def diffusers_vace_model(cfg, state: dict[str, Tensor]):
    """diffusers' WanVACETransformer3DModel holding the same weights, loaded strictly after
    diffusers' own converter (official -> diffusers names)."""
    from diffusers import WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    doc = {k: v for k, v in diffusers_config_json(cfg).items() if not k.startswith("_")}
    model = WanVACETransformer3DModel(**doc, vace_layers=list(cfg.vace_layers), vace_in_channels=cfg.vace_in_dim)
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    return model.eval()


def diffusers_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The diffusers names diffusers' own converter gives (not our table, which it checks)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


def import_diffsynth() -> types.SimpleNamespace:
    """DiffSynth's Wan DiT, model function and motion controller, or skip where not installed."""
    if importlib.util.find_spec("diffsynth") is None:
        pytest.skip("DiffSynth is not installed (pip install --no-deps diffsynth==2.1.12)")
    with torchvision_stand_in():
        from diffsynth.models.wan_video_dit import WanModel
        from diffsynth.models.wan_video_motion_controller import (
            WanMotionControllerModel,
        )
        from diffsynth.pipelines.wan_video import model_fn_wan_video
    return types.SimpleNamespace(WanModel=WanModel, model_fn=model_fn_wan_video,
                                 MotionController=WanMotionControllerModel)


def diffsynth_dit(cfg, state: dict[str, Tensor]):
    """DiffSynth's WanModel for a tiny config, holding ``state`` (strict)."""
    ds = import_diffsynth()
    model = ds.WanModel(
        dim=cfg.dim, in_dim=cfg.in_dim, ffn_dim=cfg.ffn_dim, out_dim=cfg.out_dim, text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim, eps=cfg.eps, patch_size=cfg.patch_size, num_heads=cfg.num_heads,
        num_layers=cfg.num_layers, has_image_input=cfg.clip, has_ref_conv=cfg.ref_conv,
        add_control_adapter=bool(cfg.camera_in_dim), in_dim_control_adapter=cfg.camera_in_dim or 24,
    )
    model.load_state_dict(state, strict=True)
    return model.eval()


def seeded_state(cfg, seed: int) -> dict[str, Tensor]:
    """randn * 0.1 for every tensor of the config (derivative parts included)."""
    return random_state(cfg, seed=seed)


@contextlib.contextmanager
def torchvision_stand_in():
    """Imports inside see an inert torchvision where none is installed (DiffSynth imports it for
    data loaders these checks never run). The stand-ins leave ``sys.modules`` afterwards: diffusers
    probes torchvision too, and tools that walk ``sys.modules`` (hypothesis reads every module's
    ``__file__``) must not meet a placeholder."""
    import transformers.processing_utils  # noqa: F401  (decides torchvision is absent first)

    finder = _Placeholder("torchvision") if importlib.util.find_spec("torchvision") is None else None
    if finder is not None:
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]


class _Placeholder:
    """A meta-path finder giving an empty package for one missing top-level name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        class Missing:
            def __init__(self, *args, **kwargs):
                raise RuntimeError(f"{spec.name} is a placeholder in these tests")

        module.__getattr__ = lambda attr: Missing
        return module

    def exec_module(self, module) -> None:
        pass


def text(batch: int = 1, tokens: int = 7, seed: int = 11) -> Tensor:
    """A short random umT5 context (B, tokens, 4096)."""
    return torch.randn(batch, tokens, 4096, generator=torch.Generator().manual_seed(seed))
