"""What the train and export steps do when they run (imports torch; planning never imports it)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import structlog
import torch

from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.train.adapters import full_state
from wanflow.train.batch import Batch, collate
from wanflow.train.build import build_expert
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import BatchOrder, batch_order

log = structlog.get_logger(__name__)


def run_training(step: Any, ctx: Any) -> dict[str, torch.Tensor]:
    p = step.run_params(ctx)
    if p["train.distribution"] != "none":
        from wanflow.steps.train_distributed import run_distributed
        return run_distributed(step, ctx)
    device, compute = component_runtime(p)
    model_pool.clear()  # the encoders are done: their memory goes to training
    experts = [expert_for(step, ctx, role, n, device, compute) for role, n in step.experts]
    settings = Settings.from_params(p, distill_sigmas(step, p))
    held_out, order = data_order(step, ctx, p)

    def fetch(indices: tuple[int, ...]) -> Batch:
        return collate([sample_tensors(ctx, i, step) for i in indices], device, step.first_frame)

    validation = Validation(step, ctx, device, held_out, fetch)
    trainer = Trainer(experts, settings, order, fetch, validation if validation.active else None,
                      empty_context=empty_context(ctx, p, device))
    validation.trainer = trainer
    resumed = ctx.load_partial()
    if resumed is not None:
        trainer.load_state(bytes(resumed[1]))
        log.info("train.resumed", step=trainer.step, of=settings.steps)
    bar = ctx.progress(settings.steps - trainer.step, desc="train", unit="step")
    trainer.run(lambda done, state: _checkpoint(ctx, done, state, settings.steps), bar)
    bar.close()
    if step_is_lora(p):
        out = {name: param.detach().float().cpu().contiguous() for name, param in trainer.params.items()}
    else:
        out = {f"{e.role}/{n}": t for e in experts for n, t in full_state(e.model).items()}
    out["history"] = torch.tensor(trainer.history, dtype=torch.float64).reshape(-1, 4)
    out.update({k: v.contiguous() for k, v in trainer.kept.items()})
    return out


def data_order(step: Any, ctx: Any, p: Any, world: int = 1) -> tuple[tuple[int, ...], BatchOrder]:
    """(the held-out samples, the batch order of the training ones), unreadable samples left out.
    ``batch_size`` is per process: a global batch of ``world`` processes holds one shard for each."""
    unreadable = unreadable_samples(step, ctx)
    train = tuple(i for i, _, held in step.samples if not held and i not in unreadable)
    held_out = tuple(i for i, _, held in step.samples if held and i not in unreadable)
    buckets = {i: bucket for i, bucket, _ in step.samples}
    order = batch_order([buckets.get(i, "") for i in range(max(buckets) + 1)], train,
                        int(p["train.batch_size"]) * world, p["train.seed"])
    return held_out, order


def unreadable_samples(step: Any, ctx: Any) -> set[int]:
    """Samples whose media could not be decoded (their encodes say so): left out and reported;
    refused when no sample is left to train on."""
    from wanflow.errors import ModelInputError

    bad = {i for i, _, _ in step.samples if any("unreadable" in ctx.input(f"{r}.{i}") for r in step.encodes(i))}
    if bad:
        log.warning("train.samples_skipped", count=len(bad), samples=sorted(bad)[:20],
                    note="their media could not be decoded; see train.sample_unreadable above")
    if not {i for i, _, held in step.samples if not held} - bad:
        raise ModelInputError(f"training: none of the {len(step.samples)} training samples' media could be "
                              "decoded; check the dataset's files (wanflow validate reads them all)")
    return bad


def _checkpoint(ctx: Any, done: int, state: bytes, steps: int) -> None:
    ctx.save_partial(done, state)
    if done < steps:
        log.info("train.checkpoint", step=done, of=steps, note="a killed run resumes from here")


def step_is_lora(p: Any) -> bool:
    return p["train.method"] == "lora"


def expert_for(step: Any, ctx: Any, role: str, n: int, device: str, compute: torch.dtype) -> Expert:
    files = model_pool.weight_files([ctx.weight(f"{role}.{i}") for i in range(n)])
    init = {name: ctx.weight(name) for name in step.init}
    parts = {part: ctx.weight(f"{part}.0") for part in step.parts}
    tiers = dict(step.tiers).get(role, ())
    if any(tier != "device" for tier in tiers):  # the memory plan streams the frozen base's blocks
        from wanflow.memory.dit_variants import variant_of
        from wanflow.memory.train_placement import streamed_base

        load, place = streamed_base(tiers, variant_of(files))
        streamed = [t for t in tiers if t != "device"]
        log.info("train.streamed", expert=role, resident=len(tiers) - len(streamed), streamed=len(streamed),
                 tier=streamed[0])
        return build_expert(role, files, step.run_params(ctx), init, device, compute, step.boundary, load, parts,
                            place)
    return build_expert(role, files, step.run_params(ctx), init, device, compute, step.boundary, variant_loader(files),
                        parts)


def variant_loader(files: list[Any]) -> Any:
    """The loader of the DiT variant ``files`` hold (``dit_variants``), load_dit's way; None for the Wan DiT."""
    from wanflow.memory.dit_variants import load_variant, variant_of

    variant = variant_of(files)
    if variant is None:
        return None

    def load(weights: list[Any], *, dtype: Any, device: str, attention_kernel: str, storage: str) -> Any:
        return load_variant(variant, weights, dtype, device, attention_kernel, storage, ())

    return load


def empty_context(ctx: Any, p: Any, device: Any) -> torch.Tensor | None:
    """The empty prompt's text features (1, L, D), which a dropped caption is replaced with;
    None without caption dropout (the step has no such input then)."""
    if float(p["train.caption_dropout"]) <= 0:
        return None
    return ctx.input("text.empty")["context"].to(device)


def sample_tensors(ctx: Any, index: int, step: Any) -> dict[str, Any]:
    """One sample's encodes as ``collate`` takes them: text features, x0, and its conditioning
    (the base encodes' y and CLIP tokens, or what its declared conditioners hand the DiT)."""
    from wanflow.steps.cond_motion import BUCKET
    from wanflow.steps.train_animate import with_background
    from wanflow.steps.train_call import conditioning_tensors

    out = {"context": ctx.input(f"text.{index}")["context"], "x0": ctx.input(f"x0.{index}")["x0"]}
    for c in step.conditions:
        out[c] = ctx.input(f"{c}.{index}")[c]
    roles = step.conditioning(index)
    if roles:
        found = {r: ctx.input(f"{r}.{index}") for r in roles}
        out = with_background(out, found)  # Animate replacement: the background's channels
        # a trained controller's bucket id (1,): the train step runs the controller on it
        out |= {BUCKET: found.pop(r)[BUCKET] for r in list(found) if BUCKET in found[r]}
        if found:
            out |= conditioning_tensors(tuple(found), found, out["x0"])
    return out


def distill_sigmas(step: Any, p: Any) -> list[float]:
    """direct_distill: the σ grid of the student sampler ([sampler].steps and shift)."""
    if p["train.task"] != "direct_distill":
        return []
    from wanflow.sampling import make_schedule

    return make_schedule(step.solver.load(), p["sampler.steps"], p["sampler.shift"]).sigmas.tolist()


class Validation:
    """Validation after chosen steps: one video per prompt from fixed noise, and the held-out loss."""

    def __init__(self, step: Any, ctx: Any, device: str, held_out: tuple[int, ...], fetch: Any):
        self.step, self.ctx, self.device, self.fetch = step, ctx, device, fetch
        self.held_out = held_out
        self.trainer: Trainer | None = None
        self.active = bool(step.validation_prompts or held_out)

    def __call__(self, at: int) -> tuple[dict[str, torch.Tensor], float]:
        kept = {f"validation/{at}/{k}": self._video(k) for k in range(self.step.validation_prompts)}
        loss = self.trainer.validation_loss([self.fetch((i,)) for i in self.held_out]) if self.held_out else math.nan
        if self.held_out:
            log.info("train.validation", step=at, val_loss=round(loss, 5))
        return kept, loss

    def _video(self, k: int) -> torch.Tensor:
        from wanflow.sampling import initial_noise, make_schedule, sample
        from wanflow.sampling.guidance import cfg_model

        p, step = self.ctx.params, self.step
        frames, h, w = p["video.frames"], p["video.height"], p["video.width"]
        s = step.latent_stride
        shape = (1, step.z_dim, (frames - 1) // 4 + 1, h // s, w // s)
        noise = initial_noise(shape, int(p["train.seed"]) + k).to(self.device)
        schedule = make_schedule(step.solver.load(), p["sampler.steps"], p["sampler.shift"])
        pos = self.ctx.input(f"val.pos.{k}")["context"].to(self.device)
        neg = self.ctx.input("val.neg")["context"].to(self.device) if float(p["sampler.cfg"]) != 1.0 else None

        def model_for(t: torch.Tensor) -> torch.nn.Module:
            experts = self.trainer.experts
            if len(experts) == 1:
                return experts[0].model
            return next(e.model for e in experts if e.t_min <= float(t) < e.t_max)

        def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_for(t)(x, t.reshape(1).to(x.device), pos).float()

        def uncond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_for(t)(x, t.reshape(1).to(x.device), neg).float()

        fn = cfg_model(cond, uncond, float(p["sampler.cfg"])) if neg is not None else cond
        with torch.no_grad():
            state = sample(step.solver.load(), fn, noise, schedule)
        return state.x.float().cpu()


def export_bytes(step: Any, ctx: Any) -> bytes:
    """The trained weights of ``step.role`` as safetensors bytes."""
    from wanflow.models.stable_safetensors import save_stable

    trained = ctx.input("trained")
    prefix = f"{step.role}/"
    tensors = {k.removeprefix(prefix): v for k, v in trained.items() if k.startswith(prefix)}
    header = dict(step.header)
    if step.method == "full":
        header |= {"wanflow.method": "full", "wanflow.steps": str(ctx.params["train.steps"])}
        return save_stable({k: v.contiguous() for k, v in sorted(tensors.items())}, metadata=header)
    return _lora_bytes(tensors, step, ctx, header)  # through write_lora: metadata already sorted


def _lora_bytes(tensors: dict[str, torch.Tensor], step: Any, ctx: Any, header: dict[str, str]) -> bytes:
    """Factors named ``<module>.lora_A.default.weight`` (peft's names) as a LoRA file in the dialect."""
    from wanflow.lora.delta import LoraFile, LowRank
    from wanflow.lora.write import write_lora

    p = ctx.params
    alpha = float(p["train.lora_alpha"])
    deltas = {}
    for key, down in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        up = tensors[key.replace(".lora_A.", ".lora_B.")]
        deltas[f"{module}.weight"] = LowRank(down=down, up=up, alpha=None if alpha == down.shape[0] else alpha)
    header |= {"wanflow.method": "lora", "wanflow.steps": str(p["train.steps"]),
               "wanflow.lora_rank": str(p["train.lora_rank"]), "wanflow.lora_alpha": f"{alpha:g}"}
    lora = LoraFile("wanflow", deltas)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_lora(lora, Path(tmp) / "lora.safetensors", step.dialect,
                          base_model=header.get("wanflow.base_model"),
                          recipe_digest=header.get("wanflow.recipe_digest"), metadata=header)
        return path.read_bytes()
