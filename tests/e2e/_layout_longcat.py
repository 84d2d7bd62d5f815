"""A tiny LongCat-Video repository in its real layout, under a models root.

``meituan-longcat/LongCat-Video/dit/``: the DiT (LongCat's own key names) in two
``diffusion_pytorch_model-0000N-of-00002.safetensors`` shards behind their index, beside the
``LongCatVideoTransformer3DModel`` config.json; ``scheduler/scheduler_config.json``: the diffusers
``FlowMatchEulerDiscreteScheduler`` config whose shift the authors' σ list uses;
``lora/cfg_step_lora.safetensors`` and ``lora/refinement_lora.safetensors``: the distilled run's and
the 720p refinement's LoRAs in LongCat's own format (module names
spelled with ``___lorahyphen___``, the fused ``qkv`` and ``kv_linear`` with one up-projection per
output block, an ``alpha_scale`` per module). Its umT5 and VAE are Wan-AI/Wan2.1-T2V-14B's, which
``_layout`` writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.e2e._layout import tiny, write_models_root
from wanflow.models.loading import build_on_meta
from wanflow.models.longcat import LongCatDiT
from wanflow.models.longcat_config import LongCatConfig, swiglu_width

REPO = "meituan-longcat/LongCat-Video"
ENCODERS = "wan2.1-t2v-14b"
#: The tiny release's scheduler shift (the authors' grid reads it; a test checks that it does).
SHIFT = 3.0
#: The tiny DiT: 2 blocks of width 64 (4 heads of 16), reading the tiny umT5's 64-wide features.
CONFIG = LongCatConfig(hidden_size=64, depth=2, num_heads=4, ffn_dim=swiglu_width(64), caption_channels=tiny.TEXT_DIM,
                       adaln_tembed_dim=24, frequency_embedding_size=16)


def longcat_state(seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights of the tiny DiT, scaled so that every block moves the latent."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: LongCatDiT(CONFIG)).state_dict().items()}
    g, out = torch.Generator().manual_seed(seed), {}
    for k in sorted(shapes):
        t = torch.randn(shapes[k], generator=g) * (0.3 if len(shapes[k]) == 1 else 1 / math.sqrt(shapes[k][-1]))
        out[k] = 1.0 + t if "norm" in k else t
    return out


def config_json() -> dict:
    """The released dit/config.json's fields, at the tiny sizes."""
    c = CONFIG
    return {"_class_name": "LongCatVideoTransformer3DModel", "_diffusers_version": "0.35.0",
            "in_channels": c.in_channels, "out_channels": c.out_channels, "hidden_size": c.hidden_size,
            "depth": c.depth, "num_heads": c.num_heads, "caption_channels": c.caption_channels, "mlp_ratio": 4,
            "adaln_tembed_dim": c.adaln_tembed_dim, "frequency_embedding_size": c.frequency_embedding_size,
            "patch_size": list(c.patch_size), "enable_flashattn3": False, "enable_flashattn2": True,
            "enable_xformers": False, "enable_bsa": False, "cp_split_hw": [1, 1], "text_tokens_zero_pad": True,
            "bsa_params": BSA_PARAMS}


#: The tiny release's block-sparse attention: chunks of 4 frames x 2 x 2 tokens, half of them
#: attended (the release's 0.9375 would leave no chunk of a tiny clip).
BSA_PARAMS = {"sparsity": 0.5, "chunk_3d_shape_q": [4, 2, 2], "chunk_3d_shape_k": [4, 2, 2]}


def scheduler_json(shift: float = SHIFT) -> dict:
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.35.0",
            "num_train_timesteps": 1000, "shift": shift, "use_dynamic_shifting": False}


#: The modules the release's cfg_step LoRA changes in every block, with their output blocks (n).
CFG_STEP_MODULES = {"attn.qkv": 3, "attn.proj": 1, "cross_attn.q_linear": 1, "cross_attn.kv_linear": 2,
                    "ffn.w1": 1, "ffn.w2": 1, "ffn.w3": 1}
LORA_RANK, LORA_ALPHA_SCALE = 4, 0.5


def lora_key(module: str, tensor: str) -> str:
    """A key of LongCat's LoRA format: ``lora`` + the module with each dot spelled ``___lorahyphen___``."""
    hyphen = "___lorahyphen___"
    return "lora" + hyphen + module.replace(".", hyphen) + "." + tensor


def refinement_lora() -> dict[str, torch.Tensor]:
    """A seeded LoRA in the layout of the release's lora/refinement_lora.safetensors (LongCat's own
    format, as the cfg_step LoRA's), at the tiny sizes."""
    return cfg_step_lora(seed=43)


def cfg_step_lora(seed: int = 41) -> dict[str, torch.Tensor]:
    """A seeded LoRA in the layout of the release's lora/cfg_step_lora.safetensors, at the tiny sizes."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: LongCatDiT(CONFIG)).state_dict().items()}
    g, out = torch.Generator().manual_seed(seed), {}
    for block in range(CONFIG.depth):
        for name, n in CFG_STEP_MODULES.items():
            module = f"blocks.{block}.{name}"
            rows, cols = shapes[module + ".weight"]
            out[lora_key(module, "lora_down.weight")] = torch.randn(n * LORA_RANK, cols, generator=g) / math.sqrt(cols)
            ups = [torch.randn(rows // n, LORA_RANK, generator=g) / math.sqrt(LORA_RANK) for _ in range(n)]
            if n == 1:
                out[lora_key(module, "lora_up.weight")] = ups[0]
            else:
                out |= {lora_key(module, f"lora_up.blocks.{i}.weight"): up for i, up in enumerate(ups)}
            out[lora_key(module, "alpha_scale")] = torch.tensor(LORA_ALPHA_SCALE)
    return out


def write_longcat_repo(root: Path, seed: int = 40) -> Path:
    """dit/ (two shards, their index, config.json), scheduler/ and lora/; returns the repository folder."""
    repo = root / REPO
    dit = repo / "dit"
    dit.mkdir(parents=True)
    (dit / "config.json").write_text(json.dumps(config_json(), indent=2))
    state = longcat_state(seed)
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    weight_map = {k: names[0] if k.startswith(("x_", "t_", "y_", "blocks.0.")) else names[1] for k in sorted(state)}
    for name in names:
        save_file({k: v.contiguous() for k, v in state.items() if weight_map[k] == name}, str(dit / name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (dit / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (repo / "scheduler").mkdir()
    (repo / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_json(), indent=2))
    (repo / "lora").mkdir()
    save_file(cfg_step_lora(), str(repo / "lora" / "cfg_step_lora.safetensors"))
    save_file(refinement_lora(), str(repo / "lora" / "refinement_lora.safetensors"))
    return repo


def write_longcat_models_root(root: Path) -> Path:
    """Wan-AI/Wan2.1-T2V-14B (the encoders) and the LongCat-Video release."""
    write_models_root(root, (ENCODERS,))
    write_longcat_repo(root)
    return root
