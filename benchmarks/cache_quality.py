"""What a step cache costs in quality on a model that draws: the shipped quickstart model.

Random weights say how far a cache drifts, not whether the video still shows the prompt. This
benchmark runs the trained tiny model (wanflow-tiny) through `wanflow.run` on every held-out
prompt, once uncached and once per cache setting, same seed, and reports per setting:

- the speed-up in block-stack passes (uncached passes over computed ones, counted by the cache
  itself) and the wall-time ratio of the denoise steps (noisy on a shared machine);
- PSNR (dB, peak 255) and SSIM of the decoded frames against the uncached frames, the measure
  the TeaCache and MagCache papers publish (their Wan2.1 figures are in docs/step-cache.md);
- whether the clip still shows the prompt: the quickstart classifier's colour/shape/motion
  accuracy, cached against uncached.

TeaCache's coefficients are calibrated on this model first (`wanflow cache calibrate` over
training-split prompts, never the held-out ones), as docs/step-cache.md says to do for a model
without a published set; MagCache reads the same calibration's ratios.

    python -m benchmarks.cache_quality [--seeds 1] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.generation import ssim
from scripts.quickstart.evaluate_model import ATTRIBUTES
from scripts.shapes.captions import canonical
from scripts.shapes.classify import classify
from scripts.shapes.vocabulary import HELD_OUT, training_combos

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.toml"


def settings(fragment: dict, target: float) -> dict[str, dict]:
    """The cache settings measured, by label: TeaCache at ``target``× (calibrated polynomial),
    MagCache with the calibrated ratios, First-Block-Cache and EasyCache at their usual thresholds."""
    teacache = {k: fragment[k] for k in ("mode", "coefficients", "calibrated")}
    ratios = {k: fragment[k] for k in ("ratios_cond", "ratios_uncond") if k in fragment}
    ratios.setdefault("ratios_uncond", ratios["ratios_cond"])  # at cfg 1 no unconditional pass reads it
    return {
        f"teacache {target:g}x": {"method": "teacache", "target_speedup": target, **teacache},
        "magcache 0.12": {"method": "magcache", "threshold": 0.12, **ratios},
        "first-block 0.05": {"method": "first-block", "threshold": 0.05},
        "easycache 0.05": {"method": "easycache", "threshold": 0.05},
    }


def calibrate(steps: int, runs: int, scratch: Path) -> dict:
    """The calibration fragment of the quickstart model over ``runs`` training-split prompts."""
    prompts = scratch / "prompts.txt"
    prompts.write_text("\n".join(canonical(*c) for c in training_combos()[::7][:runs]) + "\n", encoding="utf-8")
    out = scratch / "fragment.toml"
    cmd = [sys.executable, "-m", "wanflow", "cache", "calibrate", str(RECIPE), "--runs", str(runs),
           "--prompts", str(prompts), "--set", f"sampler.steps={steps}", "--out", str(out)]
    env = {**os.environ, "WANFLOW_CACHE": str(scratch / "cache")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"calibration failed:\n{proc.stderr}")
    return tomllib.loads(out.read_text(encoding="utf-8"))


def family_cfg() -> float:
    """The guidance scale the quickstart family samples with (its default: every run here uses it)."""
    from wanflow.families.tiny import family

    return float(family().defaults["sampler.cfg"])


def guidance_passes() -> int:
    """Block-stack passes a step: the prompt's, and the negative prompt's when guidance is on."""
    return 1 if family_cfg() == 1.0 else 2


class PassCounter:
    """Counts the block-stack passes every step cache of the process computes."""

    def __init__(self) -> None:
        from wanflow.sampling.step_cache import StepCache

        self.caches: list = []
        init = StepCache.__init__

        def counting(cache, *args, **kwargs):
            self.caches.append(cache)
            init(cache, *args, **kwargs)

        StepCache.__init__ = counting

    def take(self) -> int:
        """Passes computed by the caches made since the last call."""
        computed = sum(len(c.computed_steps(b)) for c in self.caches for b in c.branches)
        self.caches.clear()
        return computed


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float in [0, 255], the layout benchmarks.generation's
    metrics read."""
    return torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None]


def fixed_peak_psnr(ref: np.ndarray, x: np.ndarray) -> float:
    """PSNR with the 8-bit peak (the papers' video PSNR), whatever the clip's own range."""
    mse = float(np.mean((ref.astype(np.float64) - x.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: Sequence[str] | None = None) -> int:
    import wanflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per held-out prompt")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (the family's default is 20)")
    ap.add_argument("--target", type=float, default=2.0, help="TeaCache's target speed-up")
    ap.add_argument("--calibration-runs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counter = PassCounter()
    with tempfile.TemporaryDirectory(prefix="wanflow-cache-quality-") as tmp:
        scratch = Path(tmp)
        fragment = calibrate(args.steps, args.calibration_runs, scratch)
        measured = settings(fragment, args.target)
        rows: dict[str, dict[str, list]] = {label: {"psnr": [], "ssim": [], "passes": [], "time": [], "right": []}
                                            for label in ("uncached", *measured)}
        for combo in HELD_OUT:
            for seed in range(args.seeds):
                base = {"name": "cache-quality", "model": "wanflow-tiny", "prompt": {"text": canonical(*combo)},
                        "sampler": {"seed": seed, "steps": args.steps}}
                results = {}
                for label, cache in (("uncached", None), *measured.items()):
                    recipe = base if cache is None else {**base, "sampler": {**base["sampler"], "cache": cache}}
                    result = wanflow.run(recipe, runs_dir=scratch / "runs", cache_dir=scratch / "cache")
                    passes = counter.take() or args.steps * guidance_passes()  # uncached: every pass runs
                    frames = result.frames()
                    results[label] = frames
                    seen = classify(frames)
                    row = rows[label]
                    row["passes"].append(passes)
                    row["time"].append(result.steps["denoise"].duration_s)
                    row["right"].append([getattr(seen, a) == want for a, want in zip(ATTRIBUTES, combo)])
                    if cache is not None:
                        ref = results["uncached"]
                        row["psnr"].append(fixed_peak_psnr(ref, frames))
                        row["ssim"].append(ssim(frames_tensor(ref), frames_tensor(frames)))
    report(rows, args, fragment)
    return 0


def report(rows: dict[str, dict[str, list]], args: argparse.Namespace, fragment: dict) -> None:
    base = rows["uncached"]
    print(f"wanflow-tiny (trained quickstart model), {len(HELD_OUT)} held-out prompts x {args.seeds} seed(s), "
          f"{args.steps} Euler steps, cfg {family_cfg():g}; TeaCache calibrated on {args.calibration_runs} training-split prompts "
          f"(polynomial {[round(c, 4) for c in fragment['calibrated']]})")
    print("| setting | block passes | speed-up (passes) | denoise time ratio | PSNR dB (median, min) | SSIM (median) "
          "| colour / shape / motion right |")
    print("|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        passes = statistics.median(row["passes"])
        speed = statistics.median(b / r for b, r in zip(base["passes"], row["passes"]))
        timing = statistics.median(b / r for b, r in zip(base["time"], row["time"]))
        right = np.mean(np.array(row["right"], dtype=float), axis=0)
        quality = ("—", "—") if not row["psnr"] else (
            f"{statistics.median(row['psnr']):.1f}, {min(row['psnr']):.1f}", f"{statistics.median(row['ssim']):.3f}")
        print(f"| {label} | {passes:g} | {speed:.2f}x | {timing:.2f}x | {quality[0]} | {quality[1]} | "
              f"{' / '.join(f'{v:.2f}' for v in right)} |")


if __name__ == "__main__":
    raise SystemExit(main())
