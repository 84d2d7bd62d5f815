"""How far LongCat-Video's DiT moves with its block projections stored in fp8 ([memory].fp8).

The DiT's output (x0 − noise) with fp8 storage (and, for scale, with every weight rounded to
bf16) against the same DiT in fp32, as relative RMS
error |y' − y| / |y| over two seeded inputs, for: the release's width (hidden 4096, 32 heads,
SwiGLU 11008) with 2 blocks of seeded weights (normal, std 0.02, and Student-t with 3 degrees of
freedom scaled alike), text-to-video and a continuation through the KV cache. The same
measurement as ``benchmarks/fp8_error.py`` makes for the Wan DiTs (docs/fp8.md); docs/longcat.md
quotes it.

    python benchmarks/longcat_fp8_error.py    # about 2 minutes on a 2-core CPU
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wanflow.models.loading import build_on_meta  # noqa: E402
from wanflow.models.longcat import LongCatDiT  # noqa: E402
from wanflow.models.longcat_config import LongCatConfig, swiglu_width  # noqa: E402
from wanflow.models.longcat_loader import load_longcat_dit  # noqa: E402

CONFIG = LongCatConfig(hidden_size=4096, depth=2, num_heads=32, ffn_dim=swiglu_width(4096))
GRID = (4, 8, 8)  # latent frames, height, width: 4·4·4 = 64 tokens after the 2×2 patches


def seeded_state(heavy: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the release's shapes: matrices normal (std 0.02) or Student-t(3) at that scale,
    norms around 1, biases small."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: LongCatDiT(CONFIG)).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if len(shape) == 1:
            out[key] = (1.0 if "norm" in key else 0.0) + 0.02 * torch.randn(shape, generator=g)
        elif heavy:
            t = torch.distributions.StudentT(3.0).sample(shape)
            out[key] = 0.02 * t / t.std()
        else:
            out[key] = 0.02 * torch.randn(shape, generator=g)
    return out


def relative_errors(state: dict[str, torch.Tensor], storage: str) -> dict[str, list[float]]:
    """The output's error with ``storage`` ("fp8"; "bf16": every weight rounded to bf16, computed
    in fp32, for scale) against fp32."""
    plain = load_longcat_dit(state).eval()
    if storage == "bf16":
        fp8 = load_longcat_dit({k: v.to(torch.bfloat16).float() for k, v in state.items()}).eval()
    else:
        fp8 = load_longcat_dit(state, storage="fp8").eval()
    found: dict[str, list[float]] = {"text-to-video": [], "continuation (2 cached frames)": []}
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 16, *GRID, generator=g)
        text = torch.randn(1, 40, CONFIG.caption_channels, generator=g)
        t = torch.tensor([700.0])
        with torch.no_grad():
            for name, cond in (("text-to-video", 0), ("continuation (2 cached frames)", 2)):
                outs = []
                for model in (plain, fp8):
                    cache = model.cache_conditioning(x[:, :, :cond]) if cond else None
                    outs.append(model(x[:, :, cond:], t, text, cache=cache))
                found[name].append(float((outs[1] - outs[0]).norm() / outs[0].norm()))
    return found


def main() -> None:
    torch.manual_seed(0)
    print("| weights | storage | case | mean rel. RMS error | largest |")
    print("|---|---|---|---|---|")
    for label, heavy in (("normal", False), ("Student-t(3)", True)):
        state = seeded_state(heavy)
        for storage in ("fp8", "bf16"):
            for case, values in relative_errors(state, storage).items():
                print(f"| {label} | {storage} | {case} | {100 * sum(values) / len(values):.2f} % | "
                      f"{100 * max(values):.2f} % |")


if __name__ == "__main__":
    main()
