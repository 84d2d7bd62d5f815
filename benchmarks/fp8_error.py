"""How much error fp8 weight storage adds: one scale per tensor against one scale per output row.

Two measurements, both printed as markdown tables (docs/fp8.md quotes them):

1. Weights. For each weight distribution, at the Wan2.1-1.3B block shapes, the relative RMS
   error of the dequantised weight (|W' - W| / |W|), of a layer's output on N(0, 1) inputs
   (|xW'ᵀ - xWᵀ| / |xWᵀ|) and of the worst row, per tensor and per row; a plain fp8 cast and
   bf16 rounding of the same weights for scale. Distributions: normal (std 0.02), Student-t
   with 3 degrees of freedom (heavy tails), rows or columns of log-normal scale (trained layers
   whose channels differ in magnitude), rare large outliers, rows spanning four decades (where
   per-tensor scaling pushes small rows towards e4m3's subnormals), and the real tiny
   checkpoints' block weights (wanflow/assets and the tests' fixtures).
2. Models. The velocity a DiT predicts with each storage against the same DiT in fp32, over
   weight seeds x two seeded inputs (mean and largest relative RMS error): the tiny test DiT,
   the shipped wanflow-tiny DiT, and the 1.3B's width (dim 1536, ffn 8960) with 2 blocks, its
   weights normal or Student-t. "fp8 without scale" is a plain cast, as storage without scales
   (DiffSynth's, diffusers' layerwise casting) keeps the weights. "fp8 matmul" multiplies the
   per-row fp8 weights in fp8, each token's activations quantised at its own scale
   ([runtime].fp8_matmul, ``wanflow.models.fp8_matmul``).

    python benchmarks/fp8_error.py            # about 5 minutes on a 2-core CPU
    python benchmarks/fp8_error.py --models   # the model table only
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' fixtures

from tests.models._dit_fixtures import inputs, random_state, tiny_config
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.dit_config import WAN21_T2V_1_3B
from wanflow.models.dit_loader import config_beside, load_dit
from wanflow.models.fp8 import dequantise, quantise, stores_fp8
from wanflow.models.fp8_scaled import MARKER, scale_key

SHAPES = ((1536, 1536), (8960, 1536), (1536, 8960))  # q/k/v/o, ffn.0, ffn.2 of the 1.3B
TINY_ASSET = ROOT / "wanflow" / "assets" / "wanflow-tiny" / "dit"
INPUT_SEEDS = (1, 2)


def distributions(out: int, inp: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Synthetic weights of one shape, std about 0.02."""
    normal = torch.randn(out, inp, generator=gen) * 0.02
    t3 = torch.distributions.StudentT(3.0).sample((out, inp)) * 0.02 / 3**0.5  # global generator
    outliers = normal.clone().view(-1)
    picks = torch.randint(0, out * inp, (max(1, out * inp // 10_000),), generator=gen)
    outliers[picks] *= 50
    return {
        "normal": normal,
        "student-t (3 dof)": t3,
        "row scales log-normal (sigma 1)": normal * torch.exp(torch.randn(out, 1, generator=gen)),
        "column scales log-normal (sigma 1)": normal * torch.exp(torch.randn(1, inp, generator=gen)),
        "outliers (0.01 % x50)": outliers.view(out, inp),
        "rows over 4 decades": normal * 10 ** (torch.rand(out, 1, generator=gen) * 4 - 2),
    }


def checkpoint_weights() -> dict[str, list[torch.Tensor]]:
    """The fp8-stored weights of the shipped tiny DiT and of the tests' fixture DiTs."""
    asset = open_state_dict(TINY_ASSET / "diffusion_pytorch_model.safetensors")
    found = {"wanflow-tiny asset DiT": [t.float() for k, t in asset.items() if stores_fp8(k)]}
    for variant in ("t2v", "i2v"):
        state = random_state(tiny_config(variant))
        found[f"test fixture DiT ({variant})"] = [t for k, t in state.items() if stores_fp8(k)]
    return found


def errors(weights: list[torch.Tensor], storage: str, gen: torch.Generator) -> tuple[float, float, float]:
    """(weight, output, worst-row) relative RMS errors over a list of weights."""
    dw = w2 = dy = y2 = 0.0
    worst = 0.0
    for w in weights:
        if storage == "bf16":
            back = w.bfloat16().float()
        elif storage == "cast":  # fp8 without a scale
            back = w.to(torch.float8_e4m3fn).float()
        else:
            back = dequantise(*quantise(w, storage), torch.float32)
        x = torch.randn(256, w.shape[1], generator=gen)
        dw += (back - w).pow(2).sum().item()
        w2 += w.pow(2).sum().item()
        dy += (x @ (back - w).T).pow(2).sum().item()
        y2 += (x @ w.T).pow(2).sum().item()
        rows = (back - w).norm(dim=1) / w.norm(dim=1).clamp_min(1e-30)
        worst = max(worst, rows.max().item())
    return (dw / w2) ** 0.5, (dy / y2) ** 0.5, worst


def weight_table() -> None:
    torch.manual_seed(0)  # the Student-t sampler draws from the global generator
    gen = torch.Generator().manual_seed(0)
    cases: dict[str, list[torch.Tensor]] = {}
    for shape in SHAPES:
        for name, w in distributions(*shape, gen).items():
            cases.setdefault(name, []).append(w)
    cases |= checkpoint_weights()
    print("| weights | fp8 per tensor: W / output / worst row | fp8 per row: W / output / worst row "
          "| fp8 without scale: W | bf16: W |")
    print("|---|---|---|---|---|")
    for name, ws in cases.items():
        cells = [errors(ws, g, torch.Generator().manual_seed(1)) for g in ("tensor", "row", "cast", "bf16")]
        fmt = [" / ".join(f"{100 * v:.2f} %" for v in c) for c in cells[:2]]
        print(f"| {name} | {fmt[0]} | {fmt[1]} | {100 * cells[2][0]:.2f} % | {100 * cells[3][0]:.2f} % |")


def stored_state(state: dict[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """``state`` with its fp8-stored weights in e4m3: scaled (ComfyUI's marker and scale keys,
    scale per ``storage``: "tensor" or "row") or, for "cast", a plain cast without scales."""
    out = {} if storage == "cast" else {MARKER: torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, tensor in state.items():
        if not stores_fp8(key):
            out[key] = tensor
        elif storage == "cast":
            out[key] = tensor.to(torch.float8_e4m3fn)
        else:
            out[key], out[scale_key(key)] = quantise(tensor, storage)
    return out


STORAGES = ("bf16", "fp8 without scale", "fp8 per tensor", "fp8 per row", "fp8 per row, fp8 matmul")


def model_errors(cfg, state, dtype: torch.dtype) -> dict[str, list[float]]:
    """Relative RMS error of the velocity against fp32, per storage, for each seeded input."""
    models = {
        "fp32": load_dit(state, cfg),
        "bf16": load_dit(state, cfg, dtype=torch.bfloat16),
        "fp8 without scale": load_dit(stored_state(state, "cast"), cfg, dtype=dtype, storage="fp8"),
        "fp8 per tensor": load_dit(stored_state(state, "tensor"), cfg, dtype=dtype, storage="fp8"),
        "fp8 per row": load_dit(stored_state(state, "row"), cfg, dtype=dtype, storage="fp8"),
        "fp8 per row, fp8 matmul": load_dit(stored_state(state, "row"), cfg, dtype=dtype, storage="fp8-matmul"),
    }
    found: dict[str, list[float]] = {name: [] for name in STORAGES}
    for seed in INPUT_SEEDS:
        x = inputs(cfg, seed=seed, grid=(3, 8, 8))
        with torch.no_grad():
            outs = {name: m.eval()(**x).float() for name, m in models.items()}
        for name in STORAGES:
            found[name].append(((outs[name] - outs["fp32"]).norm() / outs["fp32"].norm()).item())
    return found


def model_table() -> None:
    asset_file = TINY_ASSET / "diffusion_pytorch_model.safetensors"
    asset = {k: t.float() for k, t in open_state_dict(asset_file).items()}
    wide = attrs.evolve(WAN21_T2V_1_3B, num_layers=2)
    tiny = tiny_config("t2v")
    cases = {  # name -> (config, weights per weight seed)
        "tiny test DiT (randn x 0.1, 2 blocks)": (tiny, [random_state(tiny, seed=s) for s in range(4)]),
        "wanflow-tiny asset DiT": (config_beside(asset_file, asset), [asset]),
        "1.3B width, 2 blocks (std 0.02)": (wide, [_normal_state(wide, seed=s) for s in range(2)]),
        "1.3B width, 2 blocks (Student-t, 3 dof)": (wide, [_normal_state(wide, seed=s, heavy=True)
                                                      for s in range(2)]),
    }
    print("\nmean (max) over weight seeds x inputs\n")
    print("| model | compute | " + " | ".join(STORAGES) + " |")
    print("|---|---|" + "---|" * len(STORAGES))
    for name, (cfg, states) in cases.items():
        for dtype in (torch.float32, torch.bfloat16):
            found: dict[str, list[float]] = {s: [] for s in STORAGES}
            for state in states:
                for storage, values in model_errors(cfg, state, dtype).items():
                    found[storage] += values
            cells = [f"{100 * sum(v) / len(v):.2f} % ({100 * max(v):.2f} %)" for v in found.values()]
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | " + " | ".join(cells) + " |")


def _normal_state(cfg, seed: int = 0, heavy: bool = False) -> dict[str, torch.Tensor]:
    """Weights of std 0.02, norm weights 1; ``heavy``: the fp8-stored
    weights drawn from a Student-t with 3 degrees of freedom instead (same std)."""
    from wanflow.models.dit import WanDiT
    from wanflow.models.loading import build_on_meta

    torch.manual_seed(seed)  # the Student-t sampler draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    shapes = build_on_meta(lambda: WanDiT(cfg)).state_dict()
    out = {}
    for k, v in sorted(shapes.items()):
        if "norm" in k:
            out[k] = torch.ones(v.shape)
        elif heavy and stores_fp8(k):
            out[k] = torch.distributions.StudentT(3.0).sample(v.shape) * 0.02 / 3**0.5
        else:
            out[k] = torch.randn(v.shape, generator=gen) * 0.02
    return out


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"torch {torch.__version__}; errors are relative RMS (|error| / |reference|)\n")
    if "--models" not in sys.argv[1:]:
        weight_table()
    model_table()
