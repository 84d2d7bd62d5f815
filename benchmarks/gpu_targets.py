"""The GPU speed targets in one process: wanflow's CFG step in each variant against diffusers'.

At 480x832x81 on random weights of a Wan2.1 T2V configuration (14B by default), one process
measures, with the models built once:

- the bf16 GEMM roofline (a large matmul, as ``benchmarks/generation.py`` measures it);
- diffusers' CFG step (two ``WanTransformer3DModel`` calls and its UniPC step);
- wanflow's CFG step with each attention backend that can run here (``sdpa``, ``cudnn``,
  ``flash3``, ``flash4``, ``sage``), optionally with compiled blocks, and with the block projections
  multiplied in fp8 (``[memory].fp8`` + ``[runtime].fp8_matmul``) where the GPU has fp8 tensor
  cores;
- for each: seconds per CFG step, the fraction of the bf16 roofline (the step's counted FLOPs
  over its time, over the matmul's FLOP/s), the ratio to diffusers' step and to SGLang's
  published 5.14 s (14B, H200), and how far one forward's velocity is from the sdpa model's.

The targets: the 14B forward at >= 85 % of the roofline in bf16; the CFG step <= 0.8x diffusers'
on the same card, or faster than 5.14 s on an H200. A JSON of the figures goes to ``--json``.

    python benchmarks/gpu_targets.py --config 14b --json $OUT/targets.json
    python benchmarks/gpu_targets.py --config 1.3b --compile
    python benchmarks/gpu_targets.py --config tiny --size 64x64x9 --device cpu   # a CPU dry run
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation import (  # noqa: E402
    CONFIGS,
    DTYPES,
    Job,
    diffusers_model,
    diffusers_sampler,
    gemm_flops,
    medians,
    parse_size,
    step_flops,
    step_times,
    wanflow_model,
    wanflow_sampler,
)

#: SGLang's published time per CFG step for Wan2.1 T2V-14B at 480x832x81 on an H200.
SGLANG_H200_STEP = 5.14
BACKENDS = ("sdpa", "cudnn", "flash3", "flash4", "sage")
#: Backends that round below bf16 (SageAttention's INT8 QK^T): timed, never the bf16 target's pick.
BELOW_BF16 = ("sage",)


def usable_backends(job: Job) -> list[str]:
    """The attention backends that can run on this device with this dtype."""
    from wanflow.models.attention import backend_problems

    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[job.dtype]
    return [name for name in BACKENDS if not backend_problems(name, job.device, dtype)]


def cfg_step(model, job: Job, steps: int, warmup: int, merged: bool = False) -> float:
    """Median wall seconds of one CFG step of wanflow's sampling loop over ``model``
    (``merged``: both passes in one batch-2 forward, ``[sampler].cfg_merge``)."""
    run = wanflow_sampler(model, job, 0, warmup + steps, merged=merged)[0]
    return medians(step_times(run, job)[warmup:])[0]


def peak_gib(job: Job) -> float | None:
    """The device's peak allocated memory since the last reset, in GiB; then reset it."""
    if not job.device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return peak


def attempt(label: str, measure) -> None:
    """Run one variant's measurement; a variant that fails is reported and the others still run
    (a CUDA path never run on this card must not cost the figures of the rest)."""
    try:
        measure()
    except Exception as exc:  # noqa: BLE001 - reported, and the next variant runs
        print(f"  {label:<28} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
              flush=True)
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def velocity(model, job: Job) -> torch.Tensor:
    from benchmarks.generation import inputs

    noise, pos, _ = inputs(job, 2)
    return model(noise.to(job.device), torch.tensor([500.0], device=job.device), pos.to(job.device)).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="14b")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: the configuration's)")
    parser.add_argument("--size", default="480x832x81", help="HxWxF pixels")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=2, help="timed CFG steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--compile", action="store_true", help="also time compiled blocks (best backend)")
    parser.add_argument("--no-fp8", action="store_true", help="skip the fp8-matmul variant")
    parser.add_argument("--compiled-only", action="store_true",
                        help="time only diffusers and the compiled variants (sdpa; fp8 matmuls)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    cfg = CONFIGS[args.config]
    cfg = attrs.evolve(cfg, num_layers=args.layers) if args.layers else cfg
    h, w, f = parse_size(args.size)
    dtype = DTYPES["bf16" if args.device.startswith("cuda") else "fp32"]
    job = Job(cfg, (1, cfg.in_dim, (f - 1) // 4 + 1, h // 8, w // 8), args.device, dtype)
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    print(f"Wan2.1 T2V {args.config} ({cfg.num_layers} layers), {h}x{w}x{f} ({job.tokens} tokens), "
          f"{str(dtype).removeprefix('torch.')}, {name}, torch {torch.__version__}; "
          f"median of {args.steps} CFG steps after {args.warmup}", flush=True)
    found: dict = {"device": name, "torch": torch.__version__, "config": args.config, "size": args.size,
                   "tokens": job.tokens, "variants": {}}
    with torch.inference_mode():
        peak = gemm_flops(job)
        found["gemm_tflops"] = peak / 1e12
        flops = {"wanflow": step_flops(job, per_prompt=False), "diffusers": step_flops(job)}
        print(f"GEMM roofline {peak / 1e12:.1f} TFLOP/s; TFLOP per CFG step: wanflow {flops['wanflow'] / 1e12:.2f}, "
              f"diffusers {flops['diffusers'] / 1e12:.2f}", flush=True)

        def report(label: str, seconds: float, impl: str = "wanflow", differ: float | None = None) -> None:
            share = flops[impl] / seconds / peak
            memory = peak_gib(job)
            entry = {"seconds": seconds, "roofline": share, "differ": differ, "peak_gib": memory}
            base = found["variants"].get("diffusers", {}).get("seconds")
            entry["vs_diffusers"] = seconds / base if base else None
            found["variants"][label] = entry
            extra = f"  {seconds / base:.3f}x diffusers" if base and impl == "wanflow" else ""
            extra += f"  {seconds / SGLANG_H200_STEP:.2f}x SGLang's 5.14 s" if args.config == "14b" else ""
            extra += f"  velocity off sdpa by {differ:.1e}" if differ is not None else ""
            extra += f"  peak {memory:.1f} GiB" if memory is not None else ""
            print(f"  {label:<28} {seconds:7.3f} s per CFG step  {share:6.1%} of the roofline{extra}", flush=True)
            if args.json:  # after every variant: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(found, indent=1))

        def theirs() -> None:
            model = diffusers_model(job)
            run, _ = diffusers_sampler(model, job, 0, args.warmup + args.steps)
            report("diffusers", medians(step_times(run, job)[args.warmup:])[0], "diffusers")

        attempt("diffusers", theirs)
        gc.collect()
        torch.cuda.empty_cache() if args.device.startswith("cuda") else None
        peak_gib(job)

        ours = wanflow_model(job)
        reference = velocity(ours, job)

        def off(model) -> float:
            """How far ``model``'s velocity is from the sdpa model's, relative to its largest value."""
            return ((velocity(model, job) - reference).abs().max() / reference.abs().max()).item()

        best = ["sdpa", float("inf")]

        def backend_step(backend: str) -> None:
            ours.attention_kernel = backend
            seconds = cfg_step(ours, job, args.steps, args.warmup)
            report(f"wanflow {backend}", seconds, differ=off(ours))
            if backend not in BELOW_BF16 and seconds < best[1]:
                best[:] = [backend, seconds]

        for backend in () if args.compiled_only else usable_backends(job):
            attempt(f"wanflow {backend}", lambda: backend_step(backend))
        ours.attention_kernel = best[0]
        if not args.compiled_only:
            attempt(f"wanflow {best[0]} cfg_merge", lambda: report(
                f"wanflow {best[0]} cfg_merge", cfg_step(ours, job, args.steps, args.warmup, merged=True)))
        if args.compile:
            from wanflow.memory.pool import compile_blocks

            def compiled() -> None:
                compile_blocks(ours)
                seconds = cfg_step(ours, job, args.steps, args.warmup + 1)  # the first steps compile
                report(f"wanflow {best[0]} compiled", seconds, differ=off(ours))

            attempt(f"wanflow {best[0]} compiled", compiled)
        ours = None  # freed before the fp8 model is built
        gc.collect()

        from wanflow.models.fp8_matmul import problems

        fp8_problems = problems(args.device, "bf16" if dtype == torch.bfloat16 else "fp32")
        if args.no_fp8 or fp8_problems:
            print(f"  fp8 matmuls not measured: {'; '.join(fp8_problems) or '--no-fp8'}")
        else:
            torch.cuda.empty_cache() if args.device.startswith("cuda") else None
            peak_gib(job)

            def fp8_step() -> None:
                fp8 = wanflow_model(attrs.evolve(job, attention=best[0], storage="fp8-matmul"))
                if not args.compiled_only:
                    report(f"wanflow {best[0]} fp8 matmul", cfg_step(fp8, job, args.steps, args.warmup),
                           differ=off(fp8))
                if args.compile:  # inductor may fuse each token's quantisation into the op before it
                    from wanflow.memory.pool import compile_blocks

                    compile_blocks(fp8)
                    report(f"wanflow {best[0]} fp8 matmul compiled", cfg_step(fp8, job, args.steps, args.warmup + 1),
                           differ=off(fp8))

            attempt(f"wanflow {best[0]} fp8 matmul", fp8_step)


if __name__ == "__main__":
    import logging

    import structlog

    from diffusers.utils import logging as diffusers_logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    diffusers_logging.set_verbosity_error()  # its note on casting: the fp32 modules are cast back there
    main()
