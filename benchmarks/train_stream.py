"""Seconds (and, on CUDA, peak device memory) of a LoRA train step: the frozen base resident vs streamed.

One Wan T2V DiT (official key layout, random weights written once to a safetensors file) is built
by ``build_expert`` (the objects a ``[train]`` stage uses: peft LoRA, gradient checkpointing) and
trained by ``Trainer.run`` with its base resident, then with its last ``--streamed`` blocks in the
host tier (``[memory].policy = "stream"``) and in the disk tier (``"disk"``), each in a fresh
interpreter. The trained factors are compared bit for bit with the resident run's (placement
never changes the numbers), and the median step time (after a warm-up step) and, on CUDA, the
allocator's peak are printed with their ratios to the resident run.

    python benchmarks/train_stream.py                         # small DiT, CPU, fp32, 2 rounds
    python benchmarks/train_stream.py --model 1.3b --latent 21,60,104 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {
    "small": {"dim": 512, "ffn_dim": 2048, "num_heads": 4, "num_layers": 8, "in_dim": 16, "out_dim": 16},
    "1.3b": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def write_checkpoint(path: Path, model: str) -> None:
    from safetensors.torch import save_file

    from wanflow.models.dit import WanDiT
    from wanflow.models.dit_config import DitConfig
    from wanflow.models.loading import build_on_meta

    cfg = DitConfig("t2v", **MODELS[model])
    meta = build_on_meta(lambda: WanDiT(cfg)).state_dict()
    gen = torch.Generator().manual_seed(0)
    save_file({k: (torch.randn(v.shape, generator=gen) * 0.02).bfloat16() for k, v in sorted(meta.items())},
              str(path))


def one_run(args: argparse.Namespace) -> dict:
    """Train in this process with ``args.tiers`` (JSON list, [] = resident); time and memory."""
    from wanflow.memory.train_placement import streamed_base
    from wanflow.train.batch import collate
    from wanflow.train.build import build_expert
    from wanflow.train.loop import Settings, Trainer
    from wanflow.train.order import batch_order

    tiers = json.loads(args.tiers)
    torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    params = {"train.method": "lora", "runtime.attention": "sdpa", "train.lora_targets": ["q", "k", "v", "o", "ffn.0",
              "ffn.2"], "train.lora_rank": 16, "train.lora_alpha": 16.0, "train.seed": 0,
              "train.gradient_checkpointing": True, "memory.fp8": False}
    load = place = None
    if tiers:
        load, place = streamed_base(tiers)
    expert = build_expert("dit", [Path(args.checkpoint)], params, {}, device, dtype, 0.0, load, None, place)
    f, h, w = (int(x) for x in args.latent.split(","))
    gen = torch.Generator().manual_seed(1)
    sample = {"context": torch.randn(1, 64, 4096, generator=gen), "x0": torch.randn(1, 16, f, h, w, generator=gen)}
    trainer = Trainer([expert], Settings(steps=args.steps, learning_rate=1e-4), batch_order([""], (0,), 1, 0),
                      lambda idx: collate([sample], device))
    ends: list[float] = []

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    original = trainer._optimizer_step

    def timed(timings):
        loss = original(timings)
        sync()
        ends.append(time.perf_counter())
        return loss

    trainer._optimizer_step = timed
    sync()
    ends.append(time.perf_counter())
    trainer.run(lambda done, state: None)
    steps = [b - a for a, b in zip(ends, ends[1:])][1:]  # the first step warms up
    out = {"seconds": statistics.median(steps)}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    torch.save({k: v.detach().cpu() for k, v in trainer.params.items()}, args.out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--latent", default="3,16,16", help="latent frames,height,width")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, interleaved (median taken)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--streamed", type=int, default=0, help="blocks streamed (the last ones); 0: all")
    parser.add_argument("--tiers", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiers is not None:
        print(json.dumps(one_run(args)))
        return
    layers = MODELS[args.model]["num_layers"]
    streamed = args.streamed or layers
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "dit.safetensors"
        write_checkpoint(checkpoint, args.model)
        seconds: dict[str, list[float]] = {}
        results, trained = {}, {}
        for _ in range(args.rounds):  # interleaved, so that a busy machine slows each alike
            for name, tier in (("resident", None), ("stream", "host"), ("disk", "disk")):
                tiers = [] if tier is None else ["device"] * (layers - streamed) + [tier] * streamed
                out = Path(tmp) / f"{name}.pt"
                command = [sys.executable, __file__, "--model", args.model, "--latent", args.latent, "--device",
                           args.device, "--dtype", args.dtype, "--steps", str(args.steps), "--threads",
                           str(args.threads), "--tiers", json.dumps(tiers), "--checkpoint", str(checkpoint),
                           "--out", str(out)]
                done = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ)
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
                seconds.setdefault(name, []).append(results[name]["seconds"])
                trained[name] = torch.load(out)
        for name, found in results.items():
            found["seconds"] = statistics.median(seconds[name])
    base = results["resident"]
    print(f"{args.model} DiT, latent {args.latent}, {args.device} {args.dtype}, {streamed} of {layers} blocks streamed")
    for name, found in results.items():
        same = all(torch.equal(trained[name][k], v) for k, v in trained["resident"].items())
        line = f"  {name:8s} {found['seconds']:.3f} s/step ({found['seconds'] / base['seconds']:.2f}x)"
        if "peak_gib" in found:
            line += f", peak {found['peak_gib']:.2f} GiB ({found['peak_gib'] / base['peak_gib']:.2f}x)"
        print(line + f", factors {'equal' if same else 'DIFFER'} to the resident run's")


if __name__ == "__main__":
    main()
