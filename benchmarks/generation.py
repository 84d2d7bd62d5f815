"""Time of one denoise step with CFG: wanflow against diffusers, the GEMM roofline, the step cache.

In one run, on random weights of a Wan2.1 T2V configuration (the same tensors in both models):

1. **Step.** One UniPC step with classifier-free guidance (a conditional and an unconditional
   forward over a 512-token prompt), as each tool's sampling loop runs it: wanflow's guided model
   over contexts prepared once per prompt, and diffusers' ``WanTransformer3DModel`` called twice
   per step as its ``WanPipeline`` does, with its ``UniPCMultistepScheduler``. Median of the
   timed steps after a warm-up; the ratio wanflow/diffusers; how far their velocities differ.
2. **Roofline.** The DiT's FLOPs per CFG step (projections, FFN, self- and cross-attention,
   embeddings, head; counted, not profiled) against the FLOP/s of a large matmul of the same
   dtype measured in this run.
3. **Step cache.** A whole sampling run uncached, then with TeaCache at a target speed-up:
   the wall-time ratio, the steps computed, and the PSNR and SSIM of the cached final latents
   against the uncached ones (same seed). TeaCache's coefficients are the published set of the
   architecture (1.3b, 14b), else fitted on this model in a calibration run of another seed
   (docs/step-cache.md, "Calibrating"). Random weights draw nothing, so this measures the
   method's drift, not the look of a video.

    python benchmarks/generation.py --threads 1            # CPU: tiny config, small latent, ~1 min
    python benchmarks/generation.py --config 1.3b --layers 2 --size 64x64x9
    python benchmarks/generation.py --config 14b --size 480x832x81 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from wanflow.models.dit_config import WAN21_T2V_1_3B, WAN21_T2V_14B, DitConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONFIGS = {"tiny": DitConfig("t2v", dim=256, ffn_dim=1024, num_heads=2, num_layers=4, in_dim=16, out_dim=16),
           "1.3b": WAN21_T2V_1_3B, "14b": WAN21_T2V_14B}
TEXT_TOKENS = 512
CFG, SHIFT = 5.0, 5.0


@attrs.frozen
class Job:
    """What is measured: the configuration, the latent's shape, the device and dtype."""

    cfg: DitConfig
    latent: tuple[int, ...]  # (1, 16, T, h, w)
    device: str
    dtype: torch.dtype
    attention: str = "sdpa"
    compile: bool = False
    dit: str | None = None  # a DiT folder (config.json + weights) to load instead of random weights
    storage: str = "compute"  # wanflow's block projections: "fp8" ([memory].fp8), "fp8-matmul" (+ fp8_matmul)

    @property
    def tokens(self) -> int:
        _, _, t, h, w = self.latent
        return t * (h // 2) * (w // 2)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def weights(job: Job) -> dict[str, torch.Tensor]:
    """The DiT's official-layout tensors on the job's device: the ``--dit`` folder's, else random."""
    if job.dit is None:
        return random_state(job.cfg, job.device, job.dtype)
    from wanflow.memory.pool import weight_files
    from wanflow.models.checkpoint_files import open_state_dict
    from wanflow.models.dit_loader import official_state

    files = weight_files(sorted(Path(job.dit).iterdir()))
    state = {k: v for f in files for k, v in open_state_dict(f).items()}
    return {k: v.to(job.device, job.dtype) for k, v in official_state(state, job.dit).items()}


def dit_config(folder: str) -> DitConfig:
    """The configuration in a DiT folder's config.json."""
    from wanflow.models.dit_loader import read_config

    return read_config(Path(folder) / "config.json", has_clip=False)


def random_state(cfg: DitConfig, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout weights, std 0.02 (norm weights 1), drawn on ``device`` from one seed:
    drawing again gives the same tensors, so each model is built on its own from them."""
    from wanflow.models.dit import WanDiT
    from wanflow.models.loading import build_on_meta

    gen = torch.Generator(device).manual_seed(seed)
    state = {}
    for name, meta in sorted(build_on_meta(lambda: WanDiT(cfg)).state_dict().items()):
        if "norm" in name and meta.ndim == 1:
            state[name] = torch.ones(meta.shape, device=device, dtype=dtype)
        else:
            state[name] = (torch.randn(meta.shape, generator=gen, device=device) * 0.02).to(dtype)
    return state


def inputs(job: Job, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise and two 512-token prompt contexts (positive, negative), seeded, fp32 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(job.latent, generator=gen)
    pos, neg = (torch.randn(1, TEXT_TOKENS, job.cfg.text_dim, generator=gen) for _ in range(2))
    return noise, pos, neg


def step_times(run: Callable[[Callable[[], None]], None], job: Job) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each step of ``run``, which calls the given tick after every
    step. On a shared CPU the process time is the steadier of the two (it is the sum over threads)."""
    stamps = []

    def tick() -> None:
        job.sync()
        stamps.append((time.perf_counter(), time.process_time()))

    tick()
    run(tick)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and median CPU seconds."""
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


# ----------------------------------------------------------------------------- wanflow


def wanflow_model(job: Job):
    from wanflow.memory.pool import compile_blocks
    from wanflow.models.dit_loader import load_dit

    model = load_dit(weights(job), job.cfg, dtype=job.dtype,
                     device=job.device, attention_kernel=job.attention,
                     storage=job.storage).eval().requires_grad_(False)
    return compile_blocks(model) if job.compile else model


def wanflow_sampler(model, job: Job, seed: int, steps: int, cache=None, branch_cache=None, merged: bool = False):
    """(run, final latent holder): UniPC with CFG over contexts prepared once, as denoise runs it;
    ``merged``: both guidance passes in one batch-2 forward (``[sampler].cfg_merge``)."""
    from wanflow.models.dit_cache import cached_forward
    from wanflow.sampling import make_schedule, sample
    from wanflow.sampling.guidance import Guidance, Passes, guided_model

    noise, pos, neg = inputs(job, seed)
    schedule = make_schedule("unipc", steps, SHIFT)
    pairs = (("pos", pos), ("neg", neg)) + ((("pair", torch.cat([pos, neg])),) if merged else ())
    prepared = {n: model.prepare_context(c.to(job.device)) for n, c in pairs}

    def velocity(name: str, branch: str):
        def fn(x, t):
            tt = t.reshape(1).expand(x.shape[0]).to(job.device)
            if cache is None:
                return model(x.to(job.device), tt, prepared[name]).float()
            return cached_forward(model, x.to(job.device), tt, prepared[name], cache=cache, branch=branch).float()
        return fn

    passes = Passes(cond=velocity("pos", "cond"), uncond=velocity("neg", "uncond"),
                    pair=velocity("pair", "pair") if merged else None)
    guided = guided_model(passes, Guidance(CFG, batched=merged), schedule)
    out = {}

    def run(tick: Callable[[], None] = lambda: None) -> None:
        out["x"] = sample("unipc", guided, noise.to(job.device), schedule, callback=lambda s: tick()).x

    return run, out, schedule


# ----------------------------------------------------------------------------- diffusers


def diffusers_model(job: Job):
    """WanTransformer3DModel holding the same tensors, in the dtype with the modules diffusers
    keeps in fp32 (``_keep_in_fp32_modules``, as ``from_pretrained(torch_dtype=...)`` does);
    built on the meta device (no random init of billions of weights), its RoPE table made anew."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from wanflow.models.dit_keys import OFFICIAL_TO_DIFFUSERS
    from wanflow.models.loading import rename_keys

    c = job.cfg
    with torch.device("meta"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
            in_channels=c.in_dim, out_channels=c.out_dim, text_dim=c.text_dim, freq_dim=c.freq_dim,
            ffn_dim=c.ffn_dim, num_layers=c.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=c.eps, rope_max_seq_len=1024)
    model = model.to_empty(device=job.device).to(job.dtype)
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, module in model.named_modules():
        if name and any(k in name.split(".") for k in keep):
            module.float()
    with torch.device(job.device):
        model.rope = WanRotaryPosEmbed(c.head_dim, (1, 2, 2), 1024)
    model.load_state_dict(rename_keys(weights(job), OFFICIAL_TO_DIFFUSERS), strict=True)
    return model.eval().requires_grad_(False)


def diffusers_sampler(model, job: Job, seed: int, steps: int):
    """diffusers' WanPipeline loop: two transformer calls per step, CFG, its UniPC scheduler."""
    from diffusers import UniPCMultistepScheduler

    noise, pos, neg = inputs(job, seed)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
    scheduler.set_timesteps(steps, device=job.device)
    context = {"pos": pos.to(job.device, job.dtype), "neg": neg.to(job.device, job.dtype)}
    out = {}

    def run(tick: Callable[[], None] = lambda: None) -> None:
        x = noise.to(job.device)
        for t in scheduler.timesteps:
            cond, uncond = (model(x.to(job.dtype), t.expand(1), context[n], return_dict=False)[0].float()
                            for n in ("pos", "neg"))
            x = scheduler.step(uncond + CFG * (cond - uncond), t, x, return_dict=False)[0]
            tick()
        out["x"] = x

    return run, out


# ----------------------------------------------------------------------------- roofline


def gemm_flops(job: Job) -> float:
    """FLOP/s of a large matmul in the job's dtype: the machine's practical ceiling. On the CPU
    it is timed in process time, as the steps are compared in it."""
    cuda = job.device.startswith("cuda")
    n = 8192 if cuda else 2048
    a, b = (torch.randn(n, n, device=job.device, dtype=job.dtype) for _ in range(2))
    a @ b
    if cuda:  # an idle GPU's clocks take a while to rise: a cold measurement reads ~10 % low
        start = time.perf_counter()
        while time.perf_counter() - start < 2.0:
            for _ in range(50):
                a @ b
            job.sync()
    repeats = 20 if cuda else 5
    times = step_times(lambda tick: [(a @ b, tick()) for _ in range(repeats)], job)
    return 2 * n**3 / statistics.median(t[1 if job.device == "cpu" else 0] for t in times)


def step_flops(job: Job, per_prompt: bool = True) -> float:
    """Matmul FLOPs of one CFG step: two forwards of projections, FFN, attention, embeddings, head.
    ``per_prompt = False`` leaves out what wanflow computes once per prompt rather than per step
    (the text embedding and every block's cross-attention keys and values)."""
    c, n, text = job.cfg, job.tokens, TEXT_TOKENS
    d = c.dim
    block = (2 * n * d * d * 4 + 4 * n * n * d  # self-attention: q, k, v, o; scores and values
             + 2 * n * d * d * 2 + 4 * n * text * d  # cross-attention: q, o; scores and values
             + 4 * n * d * c.ffn_dim)  # FFN
    patch = 2 * n * d * c.in_dim * 4 + 2 * n * d * c.out_dim * 4  # patch embedding and head
    prompt = 2 * text * (c.text_dim * d + d * d) + c.num_layers * 2 * text * d * d * 2  # text embedding; cross k, v
    return 2 * (c.num_layers * block + patch + (prompt if per_prompt else 0))


# ----------------------------------------------------------------------------- quality


def psnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    """dB over the reference's value range."""
    peak = (ref.max() - ref.min()).item()
    mse = F.mse_loss(x.float(), ref.float()).item()
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def ssim(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window σ 1.5) over every channel and frame as an image."""
    ref, x = (v.float().flatten(0, 2)[:, None] for v in (ref.transpose(1, 2), x.transpose(1, 2)))  # (N, 1, h, w)
    size = min(11, ref.shape[-2], ref.shape[-1])
    size -= 1 - size % 2  # odd, and no larger than the image
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None].to(ref)
    peak = (ref.max() - ref.min()).item()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_r, mu_x = F.conv2d(ref, window), F.conv2d(x, window)
    var_r = F.conv2d(ref * ref, window) - mu_r**2
    var_x = F.conv2d(x * x, window) - mu_x**2
    cov = F.conv2d(ref * x, window) - mu_r * mu_x
    s = ((2 * mu_r * mu_x + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_x**2 + c1) * (var_r + var_x + c2))
    return s.mean().item()


def cache_quality(model, job: Job, args: argparse.Namespace) -> None:
    """Uncached sampling runs and TeaCache ones at the target speed-up, alternated, same seed."""
    from wanflow.models.dit_cache import time_signals
    from wanflow.sampling.step_cache_settings import StepCacheSettings, make_step_cache
    from wanflow.sampling.teacache import DitArchitecture

    calibrated = teacache_calibration(model, job, args) if job.cfg.dim not in (1536, 5120) else ()
    settings = StepCacheSettings("teacache", target_speedup=args.cache_target,
                                 coefficients="calibrated" if calibrated else "auto", calibrated=calibrated)
    seconds: dict[str, list[tuple[float, float]]] = {"uncached": [], "cached": []}
    for _ in range(args.rounds):
        run, plain, schedule = wanflow_sampler(model, job, 0, args.cache_steps)
        seconds["uncached"].append(tuple(map(sum, zip(*step_times(run, job)))))
        signals = time_signals(model, [t.reshape(1).to(job.device) for t in schedule.timesteps])
        cache = make_step_cache(settings, schedule.timesteps, arch=DitArchitecture.of(job.cfg), signals=signals)
        run, cached, _ = wanflow_sampler(model, job, 0, args.cache_steps, cache=cache)
        seconds["cached"].append(tuple(map(sum, zip(*step_times(run, job)))))
    (uncached, uncached_cpu), (with_cache, cached_cpu) = (medians(seconds[k]) for k in ("uncached", "cached"))
    ref, out = plain["x"].float().cpu(), cached["x"].float().cpu()
    source = "calibrated on this model (seed 1)" if calibrated else "published set of the architecture"
    print(f"\nstep cache: TeaCache, target {args.cache_target:g}x, {args.cache_steps} steps, coefficients {source}; "
          f"computes {len(cache.plan.computed)} steps: {list(cache.plan.computed)}")
    cpu = f" (CPU time {uncached_cpu / cached_cpu:.2f}x)" if job.device == "cpu" else ""
    print(f"  uncached {uncached:.2f} s, cached {with_cache:.2f} s (medians of {args.rounds}): speed-up "
          f"{uncached / with_cache:.2f}x{cpu}; final latents PSNR {psnr(ref, out):.2f} dB, "
          f"SSIM {ssim(ref, out):.4f} against the uncached")


def teacache_calibration(model, job: Job, args: argparse.Namespace) -> tuple[float, ...]:
    """TeaCache's polynomial fitted on this model: one uncached run (seed 1) recording every step."""
    from wanflow.sampling.step_cache_calibration import Calibration

    _, _, schedule = wanflow_sampler(model, job, 1, args.cache_steps)
    calibration = Calibration(schedule.timesteps)
    run, _, _ = wanflow_sampler(model, job, 1, args.cache_steps, cache=calibration)
    run()
    return calibration.teacache_coefficients("e")


def agreement(models: dict, job: Job) -> float:
    """How far the two models' velocities differ on one input, relative to their scale: a check
    that they hold the same weights."""
    noise, pos, _ = inputs(job, 2)
    x, t, context = noise.to(job.device), torch.tensor([500.0], device=job.device), pos.to(job.device)
    ours = models["wanflow"](x, t, context).float()
    theirs = models["diffusers"](x.to(job.dtype), t, context.to(job.dtype), return_dict=False)[0].float()
    scale = theirs.abs().max().item()
    if scale == 0:
        raise SystemExit("the DiT's velocity is zero everywhere (an untrained zero-initialised head?): "
                         "nothing to compare or to cache")
    return (ours - theirs).abs().max().item() / scale


def measure(job: Job, args: argparse.Namespace) -> None:
    """Per-step times of both tools, alternated round by round so that drifting machine load
    hits both alike; the roofline; the step cache."""
    peak = gemm_flops(job)
    flops = {"wanflow": step_flops(job, per_prompt=False), "diffusers": step_flops(job)}
    models = {"wanflow": wanflow_model(job), "diffusers": diffusers_model(job)}
    samplers = {"wanflow": lambda: wanflow_sampler(models["wanflow"], job, 0, args.warmup + args.repeats)[0],
                "diffusers": lambda: diffusers_sampler(models["diffusers"], job, 0, args.warmup + args.repeats)[0]}
    times: dict[str, list[tuple[float, float]]] = {"wanflow": [], "diffusers": []}
    with torch.inference_mode():
        differ = agreement(models, job)
        for _ in range(args.rounds):
            for impl, sampler in samplers.items():
                times[impl] += step_times(sampler(), job)[args.warmup:]
        clock = "process time" if job.device == "cpu" else "wall time"
        print(f"\nGEMM {peak / 1e12:.3f} TFLOP/s measured ({clock}); GFLOP per CFG step (counted): wanflow "
              f"{flops['wanflow'] / 1e9:.2f} (text and cross-attention keys once per prompt), diffusers "
              f"{flops['diffusers'] / 1e9:.2f}")
        median = {impl: medians(t) for impl, t in times.items()}
        for impl, (wall, cpu) in median.items():
            seconds = cpu if job.device == "cpu" else wall
            print(f"  {impl:<9} {wall:8.3f} s per CFG step  {flops[impl] / seconds / peak:6.1%} of the GEMM roofline"
                  + (f"  ({cpu:.3f} s CPU time)" if job.device == "cpu" else ""))
        ratio, cpu_ratio = (median["wanflow"][i] / median["diffusers"][i] for i in (0, 1))
        print(f"  ratio wanflow/diffusers: {ratio:.3f}x per step" + (f" (CPU time {cpu_ratio:.3f}x)" if
              job.device == "cpu" else "") + f"; one forward's velocities differ by {differ:.1e} of their scale")
        del models["diffusers"]
        gc.collect()
        if args.cache_steps:
            cache_quality(models["wanflow"], job, args)


def parse_size(text: str) -> tuple[int, int, int]:
    """'480x832x81' -> (height, width, frames), checked as the Wan VAE needs them."""
    h, w, f = (int(v) for v in text.lower().split("x"))
    if h % 16 or w % 16 or (f - 1) % 4:
        raise SystemExit(f"--size {text}: height and width must be multiples of 16 and frames 4n+1")
    return h, w, f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None, help="tiny on the CPU, 1.3b on CUDA")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: the configuration's)")
    parser.add_argument("--dit", default=None, help="a T2V DiT folder (config.json and weights) instead of "
                        "random weights, e.g. a trained model for the cache's quality")
    parser.add_argument("--size", default=None, help="HxWxF pixels (CPU default 128x128x9, CUDA 480x832x81)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="fp32 on the CPU, bf16 on CUDA")
    parser.add_argument("--attention", default="sdpa", help="wanflow's attention backend ([runtime].attention)")
    parser.add_argument("--compile", action="store_true", help="torch.compile wanflow's blocks")
    parser.add_argument("--storage", choices=("compute", "fp8", "fp8-matmul"), default="compute",
                        help="wanflow's block projections: fp8 stores them in fp8 ([memory].fp8), fp8-matmul "
                        "also multiplies them in fp8 ([runtime].fp8_matmul); diffusers stays in the compute dtype")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 gives steady times on a "
                        "shared machine, where waiting threads spin and bill CPU time)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating wanflow/diffusers rounds")
    parser.add_argument("--cache-steps", type=int, default=None, help="steps of the cache runs (0: skip; "
                        "CPU default 10, CUDA 10)")
    parser.add_argument("--cache-target", type=float, default=2.0, help="TeaCache's target speed-up")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dit_config(args.dit) if args.dit else CONFIGS[args.config or ("1.3b" if cuda else "tiny")]
    cfg = attrs.evolve(cfg, num_layers=args.layers) if args.layers and not args.dit else cfg
    h, w, f = parse_size(args.size or ("480x832x81" if cuda else "128x128x9"))
    args.cache_steps = 10 if args.cache_steps is None else args.cache_steps
    job = Job(cfg, (1, cfg.in_dim, (f - 1) // 4 + 1, h // 8, w // 8), args.device,
              DTYPES[args.dtype or ("bf16" if cuda else "fp32")], args.attention, args.compile, args.dit,
              args.storage)
    name = args.device if not cuda else torch.cuda.get_device_name(torch.device(args.device))
    label = args.dit or f"Wan2.1 T2V {args.config or ('1.3b' if cuda else 'tiny')}, random weights"
    print(f"{label} (dim {cfg.dim}, {cfg.num_layers} layers), "
          f"{h}x{w}x{f} ({job.tokens} tokens), {str(job.dtype).removeprefix('torch.')}, {name}, "
          f"{torch.get_num_threads()} CPU threads; attention {job.attention}{', compiled blocks' if job.compile else ''}"
          f"{'' if job.storage == 'compute' else f', block projections {job.storage}'}; "
          f"CFG {CFG:g}, UniPC; median of {args.rounds} x {args.repeats} steps, each after {args.warmup}")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its note on casting: the fp32 modules are cast back here
    measure(job, args)


if __name__ == "__main__":
    main()
