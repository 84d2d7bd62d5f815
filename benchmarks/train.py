"""Seconds and peak memory of a LoRA training step: wanflow's Trainer against DiffSynth's loop.

One Wan T2V DiT (official key layout, random weights written once to a safetensors file) is
trained by both, each in a fresh interpreter so that its memory figures are its own:

- wanflow: ``build_expert`` (load, peft LoRA, gradient checkpointing) and ``Trainer.run``, the
  objects a ``[train]`` stage uses: seeded draws, ``sft_loss``, backward, AdamW.
- DiffSynth (``pip install --no-deps diffsynth==2.1.12``): its ``WanModel`` constructed with the
  same configuration and loaded with the same state dict, inside a ``WanVideoPipeline`` trained
  by a module written as its Wan ``train.py`` writes ``WanTrainingModule`` (split training,
  ``sft:train`` from cached inputs), through its own ``launch_training_task``: accelerate,
  ``FlowMatchSFTLoss`` (``model_fn_wan_video`` with gradient checkpointing), AdamW, ConstantLR.

Both: batch 1, LoRA rank 16 (alpha 16) on q, k, v, o, ffn.0, ffn.2 through peft, AdamW (lr 1e-4,
weight decay 0.01), gradient checkpointing per block (DiffSynth forces it on); by default a
small DiT in fp32 on the CPU. Before any timing each side computes, for one fixed draw (timestep
and noise), the velocity of the base model, then loads the same LoRA factors and computes the
loss and every LoRA gradient; the parent prints how far the two differ (a comparison of
different computations would mean nothing).

Time: the median wall time between the ends of consecutive optimizer steps, seen through each
loop's own end-of-step hook (everything the loop does), after warm-up steps; CPU time likewise.
Memory: the peak of the tensor bytes one step holds beyond what lived before it (``Recorder``),
the RSS the steps add (coarse: the allocator's slack counts) and the whole process's peak.

    python benchmarks/train.py                    # ~2 min on a 2-core CPU
    python benchmarks/train.py --threads 1 --rounds 4 --steps 8   # steadier on a shared machine
    python benchmarks/train.py --model 1.3b --latent 21,60,104 --device cuda --dtype bf16 --steps 5

The last is the real 1.3B LoRA at 480x832x81 (32 760 tokens); its CUDA path (synchronised step
ends, the CUDA allocator's peak as the tensor figure) has not been run on a GPU yet. The script
skips, saying how to install DiffSynth, when it is not importable.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import process_memory  # beside this script

#: The configurations trained by both (head_dim 128 as in every release).
MODELS = {
    "small": {"dim": 512, "ffn_dim": 2048, "num_heads": 4, "num_layers": 4, "in_dim": 16, "out_dim": 16},
    "1.3b": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LATENT = (5, 16, 16)  # latent frames, height, width (z = 16, batch 1): 5 × 8 × 8 = 320 tokens
TEXT_TOKENS = 512  # the umT5 context, as DiffSynth's prompt encoder pads it
TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
RANK = 16
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01
CHECK_SEED = 1234  # the global-RNG seed whose first draws are the check's timestep and noise
DIFFSYNTH_PIN = "diffsynth==2.1.12"


# ----------------------------------------------------------------------------- shared inputs


def write_inputs(folder: Path, setup: dict) -> None:
    """The run's setup, the checkpoint, the cached sample, the check's draw and the LoRA factors."""
    from safetensors.torch import save_file

    from wanflow.models.dit import WanDiT
    from wanflow.models.loading import build_on_meta

    (folder / "setup.json").write_text(json.dumps(setup))
    shapes = build_on_meta(lambda: WanDiT(wanflow_config(setup))).state_dict()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, meta in sorted(shapes.items()):
        norm = "norm" in name and meta.ndim == 1
        value = torch.ones(meta.shape) if norm else torch.randn(meta.shape, generator=gen) * 0.02
        state[name] = value.to(DTYPES[setup["dtype"]])
    save_file(state, str(folder / "dit.safetensors"))
    del state
    latent = setup["latent"]
    x0 = torch.randn((1, 16, *latent), generator=gen)
    context = torch.randn(1, TEXT_TOKENS, 4096, generator=gen)
    torch.manual_seed(CHECK_SEED)  # what FlowMatchSFTLoss draws first after this seed
    index = torch.randint(0, 1000, (1,))
    noise = torch.randn_like(x0)
    torch.save({"x0": x0, "context": context, "index": index, "noise": noise}, folder / "sample.pt")
    lora = {}
    for name in lora_names(shapes):
        out_features, in_features = shapes[name.split(".lora_")[0] + ".weight"].shape
        lora[name] = torch.randn((RANK, in_features) if ".lora_A." in name else (out_features, RANK),
                                 generator=gen) * 0.02
    save_file(lora, str(folder / "lora.safetensors"))


def lora_names(shapes: dict) -> list[str]:
    """peft's parameter names of the adapter on every targeted Linear."""
    modules = [n.removesuffix(".weight") for n in shapes
               if n.endswith(".weight") and n.startswith("blocks.")
               and any(n.removesuffix(".weight").endswith("." + t) for t in TARGETS)]
    return [f"{m}.lora_{ab}.default.weight" for m in modules for ab in "AB"]


def wanflow_config(setup: dict):
    from wanflow.models.dit_config import DitConfig

    return DitConfig(model_type="t2v", **MODELS[setup["model"]])


def read_setup(folder: Path) -> tuple[dict, str, torch.dtype]:
    """The run's setup as the parent wrote it, with its device and dtype."""
    setup = json.loads((folder / "setup.json").read_text())
    return setup, setup["device"], DTYPES[setup["dtype"]]


def load_lora_factors(model: torch.nn.Module, folder: Path) -> None:
    """Set the adapter of ``model`` to the shared factors (strict on the names)."""
    from safetensors.torch import load_file

    factors = load_file(str(folder / "lora.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(factors) - set(params))
    if missing:
        raise SystemExit(f"LoRA factors not in the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in factors.items():
            params[name].copy_(value)


def lora_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- children


class Recorder:
    """Times each optimizer step from the loop's own end-of-step hook; measures memory.

    The loop runs ``timed`` steps (warm-up included) and one more: RSS is read after the timed
    steps; on the CPU the extra step runs under torch's profiler, whose allocation events give the
    peak of the tensor bytes that one step holds at once beyond what lived before it (the figure
    a GPU allocator's peak shows), independent of the machine's load and the allocator's slack.
    On CUDA that figure is the allocator's own peak over the timed steps, and each step's end is
    synchronised before it is timed.
    """

    def __init__(self, timed: int, device: str) -> None:
        self.timed, self.cuda = timed, device.startswith("cuda")
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rss_peak_mb = self.base_mb = self.tensor_peak_mb = math.nan
        self.profiler = None
        self.base_allocated = 0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_allocated = torch.cuda.memory_allocated()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "won't be using warmup": one plain active step is wanted
            self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                    schedule=schedule(wait=self.timed, warmup=0, active=1),
                                    on_trace_ready=self._read_allocations)
        self.base_mb = process_memory.current_mb()
        process_memory.reset_peak()
        if not self.cuda:
            self.profiler.start()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def tick(self) -> None:
        """The end of an optimizer step."""
        if self.cuda:
            torch.cuda.synchronize()
        if len(self.wall) <= self.timed:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())
        if len(self.wall) == self.timed + 1 and math.isnan(self.rss_peak_mb):
            self.rss_peak_mb = process_memory.peak_mb()
            if self.cuda:
                self.tensor_peak_mb = (torch.cuda.max_memory_allocated() - self.base_allocated) / 2**20
        if not self.cuda:
            self.profiler.step()

    def stop(self) -> None:
        if not self.cuda:
            self.profiler.stop()

    def _read_allocations(self, prof) -> None:
        events = []

        def walk(node) -> None:
            if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            for child_node in node.children:
                walk(child_node)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
        live = peak = 0
        for _, size in sorted(events):
            live += size
            peak = max(peak, live)
        self.tensor_peak_mb = peak / 2**20 if events else math.nan

    def result(self, warmup: int) -> dict:
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])][warmup:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][warmup:]
        return {"times": wall, "cpu_times": cpu, "step_mb": self.rss_peak_mb - self.base_mb,
                "peak_mb": self.rss_peak_mb, "tensor_mb": self.tensor_peak_mb}


def wanflow_setup(folder: Path, steps: int):
    """The expert and Trainer a LoRA ``[train]`` stage builds, on the cached sample."""
    from wanflow.train.batch import Batch
    from wanflow.train.build import build_expert
    from wanflow.train.loop import Settings, Trainer
    from wanflow.train.order import BatchOrder

    _, device, dtype = read_setup(folder)
    sample = torch.load(folder / "sample.pt")
    params = {"train.method": "lora", "runtime.attention": "sdpa", "train.lora_targets": list(TARGETS),
              "train.lora_rank": RANK, "train.lora_alpha": float(RANK), "train.seed": 0,
              "train.gradient_checkpointing": True}
    expert = build_expert("dit", [folder / "dit.safetensors"], params, {}, device, dtype, 0.0)
    batch = Batch(sample["context"].to(device), sample["x0"].to(device))
    settings = Settings(steps=steps, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                        checkpoint_every=10**9, seed=0)
    trainer = Trainer([expert], settings, BatchOrder((0,), ("b",), 1, 0), lambda indices: batch)
    return expert.model, trainer, batch, sample


def wanflow_check(folder: Path) -> dict:
    """Base velocity, then loss and LoRA gradients with the shared factors, at the fixed draw."""
    from wanflow.train.batch import sft_loss, velocity
    from wanflow.train.objective import Draw, noised

    model, trainer, batch, sample = wanflow_setup(folder, 1)
    s, i = trainer.schedule, sample["index"]
    d = Draw(i, s.sigmas[i], s.timesteps[i], s.weights[i], sample["noise"])
    with torch.no_grad():
        base_velocity = velocity(model, batch, noised(batch.x0, d.noise, d.sigma), d.t)
    load_lora_factors(model, folder)
    loss = sft_loss(model, batch, d)
    loss.backward()
    return {"velocity": base_velocity.cpu(), "loss": loss.detach().cpu(), "grads": lora_grads(model)}


def wanflow_time(folder: Path, recorder: Recorder) -> None:
    """``Trainer.run`` over the recorder's steps, each end seen through the progress hook."""
    _, trainer, _, _ = wanflow_setup(folder, recorder.timed + 1)

    class Progress:
        def update(self, n: int) -> None:
            recorder.tick()

    recorder.start()
    trainer.run(lambda step, state: None, Progress())
    recorder.stop()


def import_diffsynth():
    """DiffSynth's Wan pieces. Its package imports torchvision for data loaders and the CLIP
    image encoder, which a T2V training step from cached inputs never runs; where torchvision
    is not installed an inert placeholder stands in for it during the import (using it raises)."""
    import types

    import transformers.processing_utils  # noqa: F401  (decides torchvision is absent first)

    finder = None
    if importlib.util.find_spec("torchvision") is None:
        finder = _Placeholder("torchvision")
        sys.meta_path.insert(0, finder)
    try:
        from diffsynth.diffusion import DiffusionTrainingModule, launch_training_task
        from diffsynth.diffusion.loss import FlowMatchSFTLoss
        from diffsynth.models.wan_video_dit import WanModel
        from diffsynth.pipelines.wan_video import WanVideoPipeline, model_fn_wan_video
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
    return types.SimpleNamespace(
        DiffusionTrainingModule=DiffusionTrainingModule, launch_training_task=launch_training_task,
        FlowMatchSFTLoss=FlowMatchSFTLoss, WanModel=WanModel, WanVideoPipeline=WanVideoPipeline,
        model_fn_wan_video=model_fn_wan_video)


class _Placeholder:
    """A meta-path finder giving an empty package for one missing top-level name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path, target=None):
        import importlib.machinery

        if fullname == self.name or fullname.startswith(self.name + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        import types

        module = types.ModuleType(spec.name)
        module.__path__ = []

        class Missing:
            def __init__(self, *args, **kwargs):
                raise RuntimeError(f"{spec.name} is a placeholder in this benchmark")

        module.__getattr__ = lambda attr: Missing
        return module

    def exec_module(self, module) -> None:
        pass


def diffsynth_setup(folder: Path):
    """DiffSynth's pipeline with the shared DiT, its training module and the cached inputs."""
    from safetensors.torch import load_file

    ds = import_diffsynth()
    setup, device, dtype = read_setup(folder)
    dims = MODELS[setup["model"]]
    sample = torch.load(folder / "sample.pt")

    class TrainingModule(ds.DiffusionTrainingModule):
        """DiffSynth's Wan ``WanTrainingModule`` for ``sft:train`` (cached inputs), with the DiT
        built here instead of downloaded; forward as its train.py writes it."""

        def __init__(self, pipe):
            super().__init__()
            self.pipe = self.split_pipeline_units("sft:train", pipe, None, "dit")
            self.switch_pipe_to_training_mode(self.pipe, None, "dit", ",".join(TARGETS), RANK, task="sft:train")

        def forward(self, data, inputs=None):
            inputs = self.transfer_data_to_device(inputs, self.pipe.device, self.pipe.torch_dtype)
            for unit in self.pipe.units:
                inputs = self.pipe.unit_runner(unit, self.pipe, *inputs)
            shared, posi, _ = inputs
            return ds.FlowMatchSFTLoss(self.pipe, **shared, **posi)

    dit = ds.WanModel(dim=dims["dim"], in_dim=dims["in_dim"], ffn_dim=dims["ffn_dim"], out_dim=dims["out_dim"],
                      text_dim=4096, freq_dim=256, eps=1e-6, patch_size=(1, 2, 2), num_heads=dims["num_heads"],
                      num_layers=dims["num_layers"], has_image_input=False)
    dit.load_state_dict(load_file(str(folder / "dit.safetensors")), strict=True)
    dit.to(device=device, dtype=dtype)
    pipe = ds.WanVideoPipeline(device=device, torch_dtype=dtype)
    pipe.dit = dit
    module = TrainingModule(pipe)
    shared = {"input_latents": sample["x0"], "use_gradient_checkpointing": True,
              "use_gradient_checkpointing_offload": False, "cfg_merge": False,
              "max_timestep_boundary": 1.0, "min_timestep_boundary": 0.0}
    return ds, module, (shared, {"context": sample["context"]}, {}), sample


def diffsynth_check(folder: Path) -> dict:
    """The same three numbers through DiffSynth's model_fn and FlowMatchSFTLoss."""
    ds, module, cached, sample = diffsynth_setup(folder)
    pipe, model = module.pipe, module.pipe.dit
    place = {"device": pipe.device, "dtype": pipe.torch_dtype}
    with torch.no_grad():
        t = pipe.scheduler.timesteps[sample["index"]].to(**place)
        latents = pipe.scheduler.add_noise(sample["x0"].to(**place), sample["noise"].to(**place), t)
        base_velocity = ds.model_fn_wan_video(dit=model, latents=latents, timestep=t, context=sample["context"].to(
            **place), use_gradient_checkpointing=True)
    load_lora_factors(model, folder)
    torch.manual_seed(CHECK_SEED)  # FlowMatchSFTLoss's timestep index: the parent's
    with shared_noise(sample["noise"]):  # and its noise, also where the device's generator differs
        loss = module({}, inputs=cached)
    loss.backward()
    return {"velocity": base_velocity.float().cpu(), "loss": loss.detach().float().cpu().reshape(()),
            "grads": lora_grads(model)}


@contextlib.contextmanager
def shared_noise(noise: torch.Tensor):
    """``torch.randn_like`` gives ``noise`` (placed like its argument) for the one loss call."""
    original = torch.randn_like
    torch.randn_like = lambda like, **kw: noise.to(device=like.device, dtype=like.dtype)
    try:
        yield
    finally:
        torch.randn_like = original


def diffsynth_time(folder: Path, recorder: Recorder) -> None:
    """DiffSynth's ``launch_training_task`` over the recorder's steps (one sample each)."""
    import accelerate

    ds, module, cached, _ = diffsynth_setup(folder)

    class Logger:
        """The ModelLogger hooks the loop calls, timing the steps instead of saving."""

        def on_step_end(self, accelerator, model, save_steps=None, **kwargs):
            recorder.tick()

        def on_epoch_end(self, *args, **kwargs):
            pass

        def on_training_end(self, *args, **kwargs):
            pass

    class Cached(torch.utils.data.Dataset):
        load_from_cache = True

        def __len__(self):
            return recorder.timed + 1

        def __getitem__(self, i):
            return cached

    accelerator = accelerate.Accelerator(cpu=module.pipe.device == "cpu")
    recorder.start()
    ds.launch_training_task(accelerator, Cached(), module, Logger(), learning_rate=LEARNING_RATE,
                            weight_decay=WEIGHT_DECAY, num_workers=0, num_epochs=1)
    recorder.stop()


def child(impl: str, mode: str, folder: Path, steps: int, warmup: int, threads: int, out: Path) -> None:
    """One implementation in this interpreter: the agreement check, or the timed steps."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    torch.set_num_threads(threads)
    if mode == "check":
        torch.save((wanflow_check if impl == "wanflow" else diffsynth_check)(folder), out)
        return
    recorder = Recorder(warmup + steps, read_setup(folder)[1])
    (wanflow_time if impl == "wanflow" else diffsynth_time)(folder, recorder)
    result = recorder.result(warmup)
    if len(result["times"]) != steps or math.isnan(result["tensor_mb"]):
        raise SystemExit(f"{impl}: {len(result['times'])} steps timed of {steps}, tensor peak {result['tensor_mb']}")
    out.write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent


def measure(impl: str, mode: str, folder: Path, args: argparse.Namespace) -> dict:
    """One child run in a fresh interpreter: its timings, or its check tensors."""
    out = folder / f"{impl}-{mode}.{'pt' if mode == 'check' else 'json'}"
    cmd = [sys.executable, __file__, "--child", impl, mode, str(folder), str(args.steps), str(args.warmup),
           str(args.threads), str(out)]
    done = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, stderr=subprocess.PIPE, text=True,
                          check=False)
    noise = ("USDT:", "STAGE:", "[W")  # the profiler's start/stop lines and allocator notes
    kept = [line for line in done.stderr.splitlines() if done.returncode or not line.startswith(noise)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    if done.returncode:
        raise SystemExit(f"{impl} {mode} child failed (exit {done.returncode})")
    return torch.load(out) if mode == "check" else json.loads(out.read_text())


def alternate(folder: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Alternate the implementations (ABAB...) so that drifting machine load hits both alike."""
    keys = ("times", "cpu_times", "step_mb", "peak_mb", "tensor_mb", "round_medians")
    results = {impl: {key: [] for key in keys} for impl in ("wanflow", "diffsynth")}
    for _ in range(args.rounds):
        for impl, merged in results.items():
            r = measure(impl, "time", folder, args)
            r["round_medians"] = statistics.median(r["times"])
            for key in keys:
                merged[key] += r[key] if isinstance(r[key], list) else [r[key]]
    return results


def agreement(ours: dict, ref: dict) -> str:
    """How far the two implementations' check computations differ."""
    v_ours, v_ref = ours["velocity"], ref["velocity"]
    velocity = (v_ours - v_ref).abs().max()
    loss = abs(float(ours["loss"]) - float(ref["loss"])) / abs(float(ref["loss"]))
    if set(ours["grads"]) != set(ref["grads"]):
        return f"different trained parameters: {sorted(set(ours['grads']) ^ set(ref['grads']))[:3]}"
    worst = max(float((ours["grads"][n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
                for n, g in ref["grads"].items())
    return (f"velocity max |diff| {velocity:.2e} (scale {v_ref.abs().max():.2f}); loss {float(ref['loss']):.6f}, "
            f"relative diff {loss:.2e}; LoRA gradients ({len(ref['grads'])} tensors) worst relative diff "
            f"{worst:.2e}")


def report(results: dict[str, dict]) -> None:
    """Medians per implementation and the ratios wanflow/DiffSynth."""
    rows = {}
    for impl, r in results.items():
        t, cpu = statistics.median(r["times"]), statistics.median(r["cpu_times"])
        tensor, rss, peak = max(r["tensor_mb"]), statistics.median(r["step_mb"]), max(r["peak_mb"])
        rows[impl] = (t, cpu, tensor, rss, peak)
        rounds = ", ".join(f"{m:.3f}" for m in r["round_medians"])
        print(f"  {impl:<9} {t:6.3f} s/step ({1 / t:5.2f} steps/s; round medians {rounds}), CPU {cpu:6.3f} s; "
              f"tensor peak {tensor:6.1f} MB; steps add {rss:4.0f} MB RSS; process peak {peak:4.0f} MB")
    ours, ref = rows["wanflow"], rows["diffsynth"]
    t, cpu, tensor, rss, peak = (a / b for a, b in zip(ours, ref))
    print(f"  ratio wanflow/diffsynth: time {t:.3f}x (steps/s {1 / t:.3f}x, CPU time {cpu:.3f}x), "
          f"tensor peak {tensor:.3f}x, RSS added {rss:.3f}x, process peak {peak:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per child")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2, help="alternating wanflow/DiffSynth rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child")
    parser.add_argument("--latent", default=",".join(map(str, LATENT)), help="latent frames,height,width")
    parser.add_argument("--model", choices=sorted(MODELS), default="small", help="DiT size (1.3b: the release)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and compute")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, mode, folder, steps, warmup, threads, out = args.child
        child(impl, mode, Path(folder), int(steps), int(warmup), int(threads), Path(out))
        return
    if importlib.util.find_spec("diffsynth") is None:
        print(f"skipped: DiffSynth is not installed; `pip install --no-deps {DIFFSYNTH_PIN} pandas imageio` "
              "(the rest of its requirements are wanflow's own)")
        return
    sys.stdout.reconfigure(line_buffering=True)
    from importlib.metadata import version

    found = version("diffsynth")
    if found != DIFFSYNTH_PIN.split("==")[1]:
        print(f"note: DiffSynth {found} is installed; these figures were written against {DIFFSYNTH_PIN}")
    setup = {"model": args.model, "device": args.device, "dtype": args.dtype,
             "latent": [int(n) for n in args.latent.split(",")]}
    dims, (frames, height, width) = MODELS[args.model], setup["latent"]
    print(f"LoRA training step, Wan T2V DiT dim {dims['dim']}, ffn {dims['ffn_dim']}, {dims['num_layers']} layers, "
          f"latent (1, 16, {frames}, {height}, {width}) = {frames * height * width // 4} tokens, {TEXT_TOKENS} "
          f"text tokens, LoRA rank {RANK} on {','.join(TARGETS)}, {args.dtype} on {args.device}, "
          f"{args.threads} threads; DiffSynth {found}; median of {args.rounds} x {args.steps} steps after "
          f"{args.warmup} warm-up")
    with tempfile.TemporaryDirectory(prefix="wanflow-bench-train-") as tmp:
        folder = Path(tmp)
        write_inputs(folder, setup)
        checks = {impl: measure(impl, "check", folder, args) for impl in ("wanflow", "diffsynth")}
        print("agreement at one fixed draw: " + agreement(checks["wanflow"], checks["diffsynth"]))
        report(alternate(folder, args))


if __name__ == "__main__":
    main()
