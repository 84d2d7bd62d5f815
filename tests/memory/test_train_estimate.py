"""The train step's estimate against the live tensor bytes of tiny training steps (within 20 %),
and the train step in a training job's memory plan."""

from __future__ import annotations

import tracemalloc
import weakref

import attrs
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.e2e._layout import write_models_root
from tests.e2e._train import COLOURS, write_dataset, write_train_recipe
from tests.e2e.conftest import use_models
from wanflow.cli import main
from wanflow.memory import train_estimate as te
from wanflow.memory.planner import MemoryPlanError
from wanflow.models.dit import WanDiT
from wanflow.models.rope import rope_table
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe
from wanflow.train.adapters import adapted_modules, inject_lora, unfreeze
from wanflow.train.batch import Batch
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

from ..models._dit_fixtures import random_state, tiny_config
from ._ledger import growth as measured_growth

TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
RANK = 8
SHAPE = {"dim": 256, "ffn_dim": 768, "num_heads": 2, "text_dim": 64}


class TrainingBytes(TorchDispatchMode):
    """Peak bytes of the tensors a training step creates (gradients, moments, activations).

    The model's parameters exist before and are not counted, nor views of tensors made before; a
    storage shared by several tensors counts once. A running total, unlike ``_ledger.LiveBytes``, which a backward of thousands of
    operations would make slow.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.live: dict[int, int] = {}
        self.total = self.peak = 0

    def _drop(self, key: int) -> None:
        self.total -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live or key in self.params or key in inputs:  # a view or in-place result
                    continue
                self.live[key] = storage.nbytes()
                self.total += self.live[key]
                weakref.finalize(storage, self._drop, key)
        self.peak = max(self.peak, self.total)
        return out


@attrs.frozen
class Case:
    """A tiny training step: the family variant, method, precision, checkpointing and micro-batch."""

    variant: str = "t2v"
    method: str = "lora"
    dtype: torch.dtype = torch.float32
    checkpointing: bool = True
    grid: tuple[int, int, int] = (9, 16, 16)
    batch: int = 1
    dit: dict = attrs.field(factory=dict)  # DiT shape overrides
    forwards: int = 1  # > 1: direct distillation through that many student steps

    def setup(self, adapters: te.Adapters | None, offload: bool = False) -> te.TrainSetup:
        itemsize = self.dtype.itemsize if self.method == "lora" else 4
        return te.TrainSetup(self.method, self.batch, self.grid, itemsize, self.checkpointing, offload, adapters,
                             per_token_time=self.variant == "ti2v", forwards=self.forwards)

    def settings(self, offload: bool) -> Settings:
        sigmas = tuple(1 - k / self.forwards for k in range(self.forwards + 1)) if self.forwards > 1 else ()
        return Settings(task="direct_distill" if sigmas else "sft", steps=2, checkpoint_every=100,
                        offload_activations=offload, distill_sigmas=sigmas)


def trainer(case: Case, offload: bool = False) -> tuple[Trainer, WanDiT, te.Trained, te.Adapters | None]:
    """A tiny DiT set up as ``wanflow.train.build`` does, a trainer on one fixed micro-batch, and
    the estimate's view of the DiT: its stored weights and trained parameters (a LoRA's read off
    the Linear shapes, the adapted layers chosen by the adapter code's own matching)."""
    cfg = tiny_config(case.variant, **{**SHAPE, **case.dit})
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg))
    model.set_compute_dtype(case.dtype if case.method == "lora" else torch.float32)
    model.requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if case.method == "lora":
        linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        adapters, params, block = te.lora_adapters(linears, adapted_modules(model, TARGETS), RANK)
        inject_lora(model, TARGETS, RANK, float(RANK), 0)
    else:
        adapters, params = None, sum(p.numel() for p in model.parameters())
        block = sum(p.numel() for p in model.blocks[0].parameters())
        unfreeze(model)
    model.gradient_checkpointing = case.checkpointing
    model.train()
    gen = torch.Generator().manual_seed(0)
    latent, b = cfg.out_dim, case.batch
    extra = cfg.in_dim - latent
    micro = Batch(torch.randn(b, 7, cfg.text_dim, generator=gen), torch.randn(b, latent, *case.grid, generator=gen),
                  torch.randn(b, extra, *case.grid, generator=gen) if extra else None,
                  torch.randn(b, cfg.image_len, 1280, generator=gen) if cfg.clip else None,
                  first_frame=case.variant == "ti2v")
    order = batch_order([""] * b, tuple(range(b)), b, 0)
    train = Trainer([Expert("dit", model)], case.settings(offload), order, lambda _: micro)
    return train, model, te.Trained(weights, params, block, cfg.num_layers), adapters


def measured_and_predicted(case: Case) -> tuple[int, int]:
    """Bytes a CPU training step adds to the frozen weights: measured (two optimizer steps, so the
    second runs beside AdamW's moments) and predicted (trained state and activations)."""
    train, model, dit, adapters = trainer(case)
    rope_table.cache_clear()  # each step makes (and keeps) its own RoPE tables, whatever ran before
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    lora_factors = dit.params * 4 if case.method == "lora" else 0  # created before the ledger
    peak = te.train_peak(model.cfg, case.setup(adapters), [dit], device_run=False)
    return ledger.peak + lora_factors, peak.state + peak.activations


CASES = {
    "lora, checkpointed, 6 blocks": Case(grid=(5, 16, 16), dit={"num_layers": 6}),
    "lora bf16, checkpointed": Case(dtype=torch.bfloat16, dit={"num_layers": 4}),
    "lora bf16, every block held, 2 clips": Case(dtype=torch.bfloat16, checkpointing=False, grid=(5, 16, 16),
                                                 batch=2),
    "lora i2v (CLIP tokens)": Case("i2v", grid=(5, 16, 16)),
    "lora ti2v (per-token timesteps)": Case("ti2v", grid=(5, 16, 16)),
    "lora, direct distillation through 3 student steps": Case(grid=(5, 16, 16), forwards=3),
    "full, checkpointed": Case(method="full", grid=(5, 24, 24), dit={"num_layers": 4}),
    "full, every block held": Case(method="full", checkpointing=False, grid=(5, 16, 16)),
    "full, a small clip (optimizer state dominates)": Case(method="full", grid=(1, 8, 8)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_train_step_estimate(case):
    measured, predicted = measured_and_predicted(case)
    assert predicted == pytest.approx(measured, rel=0.2)


def growth(make, small, large) -> tuple[int, int]:
    """(measured, predicted) growth of the step's bytes from ``make(small)`` to ``make(large)``."""
    return measured_growth(measured_and_predicted, make(small), make(large))


def test_checkpointing_keeps_one_input_per_block():
    measured, predicted = growth(lambda n: Case(dit={"num_layers": n}), 2, 8)
    assert predicted == pytest.approx(measured, rel=0.2)


#: Growth per block isolates what a block holds for backward; counted to within a few percent.
PER_BLOCK = {"lora": Case(checkpointing=False),
             "lora bf16": Case(dtype=torch.bfloat16, checkpointing=False),
             "full": Case(method="full", checkpointing=False, grid=(9, 24, 24))}


@pytest.mark.parametrize("case", PER_BLOCK.values(), ids=PER_BLOCK.keys())
def test_without_checkpointing_every_block_holds_its_tensors(case):
    measured, predicted = growth(lambda n: attrs.evolve(case, dit={"num_layers": n}), 2, 4)
    assert predicted == pytest.approx(measured, rel=0.1)


def test_what_the_feed_forward_width_adds():
    """The FFN's hidden tensors: held by the block, and their gradients in backward."""
    measured, predicted = growth(lambda f: Case(dit={"ffn_dim": f}), 768, 1536)
    assert predicted == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("variant", ["i2v", "ti2v"], ids=["CLIP tokens", "per-token timesteps"])
def test_what_a_familys_conditioning_adds(variant):
    """Against T2V at the same size: CLIP tokens (image keys/values, a second attention) or
    per-token timesteps (fp32 modulations per token)."""
    measured, predicted = growth(lambda v: Case(v), "t2v", variant)
    assert predicted == pytest.approx(measured, rel=0.15)


class _Held(list):
    """What ``Offloaded`` hands autograd for a saved tensor (a list, so it can be weakly referenced)."""


class Offloaded(torch.autograd.graph.saved_tensors_hooks):
    """``save_on_cpu`` as a device run sees it: each saved tensor copied (counted) at every save."""

    live = peak = 0

    def __init__(self, pin_memory: bool = False):
        def pack(t: torch.Tensor) -> _Held:
            held, n = _Held([t]), t.numel() * t.element_size()
            Offloaded.live += n
            Offloaded.peak = max(Offloaded.peak, Offloaded.live)
            weakref.finalize(held, Offloaded._free, n)
            return held

        super().__init__(pack, lambda held: held[0])

    @staticmethod
    def _free(n: int) -> None:
        Offloaded.live -= n


def test_offloading_moves_each_blocks_checkpointed_input(monkeypatch):
    monkeypatch.setattr(Offloaded, "live", 0)
    monkeypatch.setattr(Offloaded, "peak", 0)
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Offloaded)
    case = Case(dit={"num_layers": 6})
    train, model, _, adapters = trainer(case, offload=True)
    train.run(lambda done, state: None)
    _, _, moved = te.activation_bytes(model.cfg, case.setup(adapters, offload=True), device_run=True)
    assert moved == pytest.approx(Offloaded.peak, rel=0.2)


def test_offloading_frees_the_device_and_nothing_on_a_cpu():
    cfg, dit = tiny_config("t2v", **SHAPE, num_layers=30), te.Trained(10**8, 10**6, 3 * 10**4, 30)
    kept, moved = (te.train_peak(cfg, Case(grid=(21, 30, 52)).setup(None, offload=o), [dit], device_run=True)
                   for o in (False, True))
    inputs = 30 * 21 * 15 * 26 * 4 * cfg.dim  # every block's checkpointed input, fp32
    assert kept.device_bytes - moved.device_bytes >= inputs * 0.9
    assert moved.host_bytes >= inputs > kept.host_bytes
    cpu = [te.train_peak(cfg, Case(grid=(21, 30, 52)).setup(None, offload=o), [dit], device_run=False).host_bytes
           for o in (False, True)]
    assert cpu[0] == cpu[1]


def test_a_checkpoint_is_built_in_host_memory():
    """``Trainer.state_bytes``: the trained parameters copied and serialised with their moments."""
    train, model, dit, _ = trainer(Case(method="full", grid=(1, 4, 4)))
    train.run(lambda done, state: None)
    tracemalloc.start()
    try:
        with TrainingBytes(model) as ledger:
            train.state_bytes()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert te.CHECKPOINT * dit.params == pytest.approx(ledger.peak + python_peak, rel=0.2)


def test_a14b_holds_both_experts_and_their_gradients_when_accumulating():
    cfg = tiny_config("t2v", **SHAPE)
    setup = Case().setup(None)
    expert = te.Trained(10**8, 10**6, 10**5, cfg.num_layers)
    one = te.train_peak(cfg, setup, [expert], device_run=True)
    two = te.train_peak(cfg, setup, [expert, expert], device_run=True)
    assert two.weights == 2 * one.weights
    assert two.device_bytes - one.device_bytes == expert.weight_bytes + expert.params * (te.MOMENTS + 4)
    accumulating = te.train_peak(cfg, setup, [expert, expert], device_run=True, accumulation=2)
    assert accumulating.device_bytes - two.device_bytes == expert.params * te.GRAD


def test_lora_parameters_follow_peft_matching():
    cfg = tiny_config("i2v", **SHAPE)
    model = WanDiT(cfg).requires_grad_(False)
    linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for targets in (("self_attn.q", "ffn.2"), ("k", "v"), TARGETS):
        _, params, _ = te.lora_adapters(linears, adapted_modules(model, targets), 4)
        adapted = WanDiT(cfg).requires_grad_(False)
        inject_lora(adapted, targets, 4, 4.0, 0)
        assert params == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- in a job's plan


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Every family's tiny weights in their official layout (the end-to-end tests' models)."""
    return write_models_root(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def env(tiny_models, tmp_path, monkeypatch) -> None:
    use_models(tiny_models, tmp_path, monkeypatch)


def training_plan(recipe, *sets: str):
    resolved = load_recipe(recipe, sets=sets)
    return get_registry().pipeline(resolved.model).memory_plan(resolved)


def train_host_bytes(recipe, *sets: str) -> int:
    found = training_plan(recipe, *sets)
    return next(p for p in found.peaks if p.step == "train").host_bytes


#: A small [video] so that the training step, not generation, is what a budget must hold.
SMALL_VIDEO = ("video.frames=1", "video.width=16", "video.height=16")


def test_a_training_plan_has_the_train_step(env, tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", data, frames=9)
    steps = [p.step for p in training_plan(recipe).peaks]
    assert steps[-1] == "train" and steps.count("train") == 1
    base = train_host_bytes(recipe)
    assert train_host_bytes(recipe, "train.gradient_checkpointing=false") > base
    assert train_host_bytes(recipe, "train.batch_size=2") > base
    assert train_host_bytes(recipe, "train.method=full") > base
    a14b = write_train_recipe(tmp_path, "wan2.2-t2v-a14b", data, name="a14b", frames=9)
    assert train_host_bytes(a14b) > base  # both experts resident
    assert main(["plan", str(recipe)]) == 0
    assert "step train: peak host" in capsys.readouterr().out


def test_a_training_step_that_cannot_fit_is_refused_with_training_fixes(env, tmp_path):
    rows = [(colour, direction) for colour in COLOURS for direction in (1, -1)] * 2
    data = write_dataset(tmp_path / "data", rows)
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", data, frames=9, gradient_checkpointing=False,
                                batch_size=len(rows))
    held = train_host_bytes(recipe, *SMALL_VIDEO)
    checkpointed = train_host_bytes(recipe, *SMALL_VIDEO, "train.gradient_checkpointing=true")
    budget = (held + checkpointed) / 2 / 2**30
    resolved = load_recipe(recipe, sets=(*SMALL_VIDEO, f"memory.limit_gb={budget}"))
    with pytest.raises(MemoryPlanError) as refused:
        get_registry().pipeline(resolved.model).steps(resolved)  # planning: no model has loaded
    text = str(refused.value)
    assert text.startswith(f"{recipe}: [train]: the train step needs ")
    assert "of host memory" in text and "largest bucket 32x32x9" in text
    assert refused.value.fixes[0] == "[train].gradient_checkpointing = true"
    assert any(f.startswith("[train].batch_size = ") for f in refused.value.fixes)
    assert refused.value.fixes[-1].startswith("a host budget ([memory].host_limit_gb) of ")


def test_a_device_optimizer_step_holds_a_temporary_per_parameter():
    """On a GPU AdamW runs its ``foreach`` kernels, which take an fp32 temporary of every trained
    parameter after backward: measured here by asking the CPU for the same kernels."""
    case = Case(method="full", grid=(1, 4, 4))
    train, model, dit, _ = trainer(case)
    train.optimizer = torch.optim.AdamW(train.optimizer.param_groups[0]["params"], lr=1e-4, foreach=True)
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    peak = te.train_peak(model.cfg, case.setup(None), [dit], device_run=True)
    assert peak.device_bytes - peak.weights == pytest.approx(ledger.peak, rel=0.2)
