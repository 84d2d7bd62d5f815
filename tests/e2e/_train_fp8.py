"""Checks of a LoRA trained over an fp8-stored frozen base ([memory].fp8), shared by the DiT variants."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import load_file

from wanflow.steps.memory_plan import train_job as _train_job


def lora_factors(outcome) -> dict[str, torch.Tensor]:
    return load_file(str(outcome.archive / "outputs" / "lora.safetensors"))


def assert_close_not_equal(plain: dict, fp8: dict) -> None:
    """The same fp32 initialisation trained over the compute-dtype base (``plain``) and over its
    fp8 rounding: the up factors (zero at the start: what training learnt) differ, by less than
    half what was learnt (a base read wrongly would give unrelated factors)."""
    assert set(plain) == set(fp8), sorted(set(plain) ^ set(fp8))[:6]
    assert all(t.dtype == torch.float32 for t in fp8.values()), {t.dtype for t in fp8.values()}
    ups = [k for k in plain if ".lora_B." in k]
    drift = torch.cat([(fp8[k] - plain[k]).flatten() for k in ups]).norm()
    learnt = torch.cat([plain[k].flatten() for k in ups]).norm()
    assert 0 < drift < 0.5 * learnt, (float(drift), float(learnt))


def assert_holds_generation_fp8(files: Sequence[Path], loader: Callable[..., torch.nn.Module]) -> None:
    """The LoRA expert the train step builds over ``files`` with [memory].fp8: every frozen tensor
    (fp8 projections and their scales, fp32 islands, the variant's side modules) equals the
    generation loader's fp8 DiT's bit for bit, and the LoRA wraps the fp8 layers (fp32 factors)."""
    from wanflow.models.fp8 import Fp8Linear, fp8_dtype
    from wanflow.steps.train_run import variant_loader
    from wanflow.train.build import build_expert

    params = {"train.method": "lora", "memory.fp8": True, "runtime.attention": "sdpa", "train.lora_rank": 4,
              "train.lora_targets": ["q", "k", "v", "o", "ffn.0", "ffn.2"], "train.lora_alpha": 4.0,
              "train.seed": 0, "train.gradient_checkpointing": True}
    trained = build_expert("dit", list(files), params, {}, "cpu", torch.float32, 0.0, variant_loader(list(files)))
    reference = loader(list(files), dtype=torch.float32, storage="fp8").state_dict()
    frozen = {k.replace(".base_layer.", "."): v for k, v in trained.model.state_dict().items() if ".lora_" not in k}
    assert set(frozen) == set(reference), sorted(set(frozen) ^ set(reference))[:6]
    differ = [k for k in reference if frozen[k].dtype != reference[k].dtype
              or not torch.equal(frozen[k].float(), reference[k].float())]
    assert not differ, differ[:6]
    assert any(v.dtype == fp8_dtype() for v in reference.values())
    wrapped = [m for m in trained.model.modules() if isinstance(getattr(m, "base_layer", None), Fp8Linear)]
    assert wrapped and all(m.lora_A["default"].weight.dtype == torch.float32 for m in wrapped)


def _held_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def assert_plan_drops_by_the_fp8_saving(recipe: Path, files: Sequence[Path],
                                        loader: Callable[..., torch.nn.Module]) -> None:
    """The train step's planned peak with [memory].fp8 is the compute-dtype plan's less what the
    generation loader's fp8 DiT holds less than its compute-dtype DiT (both at the recipe's fp32);
    under a host budget between the two, the compute-dtype base is refused with fp8 storage as the
    cheapest fix, and fp8 storage fits."""
    from wanflow.memory.planner import Budgets, MemoryPlanError
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe
    from wanflow.steps import memory_plan

    def train_peak(*sets: str):
        resolved = load_recipe(recipe, sets=sets)
        found = get_registry().pipeline(resolved.model).memory_plan(resolved)
        return next(p for p in found.peaks if p.step == "train")

    plain, fp8 = train_peak(), train_peak("memory.fp8=true")
    saving = _held_bytes(loader(list(files), dtype=torch.float32)) - \
        _held_bytes(loader(list(files), dtype=torch.float32, storage="fp8"))
    assert saving > 0
    assert plain.host_bytes - fp8.host_bytes == saving  # a CPU run: the DiT in host memory
    jobs = []  # the train step's sized job, as the plan builds it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory_plan, "train_job", lambda *a, **k: jobs.append(_train_job(*a, **k)) or jobs[-1])
        train_peak()
    budgets = Budgets(None, (plain.host_bytes + fp8.host_bytes) // 2)
    with pytest.raises(MemoryPlanError) as refused:
        memory_plan.sized_train_step(recipe, jobs[0], budgets)
    assert refused.value.fixes[0].startswith("[memory].fp8 = true"), refused.value.fixes
    assert memory_plan.sized_train_step(recipe, attrs.evolve(jobs[0], fp8=True), budgets).host_bytes == fp8.host_bytes
