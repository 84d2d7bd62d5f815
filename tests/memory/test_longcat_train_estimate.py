"""LongCat-Video's train step estimate against the live tensor bytes of tiny training steps (within
20 %, as the Wan DiTs' estimate is checked), what offloading moves, and the LoRA's parameters."""

from __future__ import annotations

import attrs
import pytest
import torch

from wanflow.memory import longcat_train_estimate as lte
from wanflow.memory import train_estimate as te
from wanflow.models.longcat import LongCatDiT, rope_table
from wanflow.models.longcat_config import LongCatConfig, keeps_fp32, swiglu_width
from wanflow.train.adapters import adapted_modules, inject_lora, unfreeze
from wanflow.train.batch import Batch
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

from ._ledger import growth as measured_growth
from .test_train_estimate import Offloaded, TrainingBytes

#: The family's default LoRA targets (DiffSynth's).
TARGETS = ("adaLN_modulation.1", "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
           "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")
RANK = 8


@attrs.frozen
class Case:
    """A tiny LongCat training step: method, precision, checkpointing, micro-batch and clip."""

    method: str = "lora"
    dtype: torch.dtype = torch.float32
    checkpointing: bool = True
    grid: tuple[int, int, int] = (5, 16, 16)  # latent (frames, height, width), conditioning included
    cond: int = 0  # leading latent frames of a continuation's conditioning
    batch: int = 1
    width: int = 256
    depth: int = 2
    targets: tuple[str, ...] = TARGETS
    text_len: int = 512  # prompt slots the DiT pads the text to (the release's 512)

    def config(self) -> LongCatConfig:
        return LongCatConfig(hidden_size=self.width, depth=self.depth, num_heads=self.width // 128,
                             ffn_dim=swiglu_width(self.width), caption_channels=32, adaln_tembed_dim=24,
                             frequency_embedding_size=16, text_len=self.text_len)

    def setup(self, adapters: te.Adapters | None, offload: bool = False) -> te.TrainSetup:
        itemsize = self.dtype.itemsize if self.method == "lora" else 4
        return te.TrainSetup(self.method, self.batch, self.grid, itemsize, self.checkpointing, offload, adapters)


def trainer(case: Case, offload: bool = False) -> tuple[Trainer, LongCatDiT, te.Trained, te.Adapters | None]:
    """A tiny LongCat DiT set up as ``wanflow.train.build`` does (the frozen base at the compute
    dtype with its fp32 islands, or fp32 under full fine-tuning), a trainer on one fixed
    micro-batch, and the estimate's view of the DiT (a LoRA's read off the Linear shapes, the
    adapted layers chosen by the adapter code's own matching)."""
    model = LongCatDiT(case.config())
    compute = case.dtype if case.method == "lora" else torch.float32
    for name, p in model.named_parameters():
        if not keeps_fp32(name):
            p.data = p.data.to(compute)
    model.requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if case.method == "lora":
        linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        adapters, params, block = lte.lora_adapters(linears, adapted_modules(model, case.targets), RANK)
        inject_lora(model, case.targets, RANK, float(RANK), 0)
    else:
        adapters, params = None, sum(p.numel() for p in model.parameters())
        block = sum(p.numel() for p in model.blocks[0].parameters())
        unfreeze(model)
    model.gradient_checkpointing = case.checkpointing
    model.train()
    gen = torch.Generator().manual_seed(0)
    b, (frames, h, w) = case.batch, case.grid
    micro = Batch(torch.randn(b, 7, 32, generator=gen), torch.randn(b, 16, frames, h, w, generator=gen),
                  longcat=torch.randn(b, 16, case.cond, h, w, generator=gen) if case.cond else None)
    order = batch_order([""] * b, tuple(range(b)), b, 0)
    settings = Settings(task="sft", steps=2, checkpoint_every=100, offload_activations=offload)
    train = Trainer([Expert("dit", model)], settings, order, lambda _: micro)
    return train, model, te.Trained(weights, params, block, case.depth), adapters


def measured_and_predicted(case: Case) -> tuple[int, int]:
    """Bytes a CPU training step adds to the frozen weights: measured (two optimizer steps, so the
    second runs beside AdamW's moments) and predicted (trained state and activations)."""
    train, model, dit, adapters = trainer(case)
    rope_table.cache_clear()  # each step makes (and keeps) its own RoPE tables, whatever ran before
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    lora_factors = dit.params * 4 if case.method == "lora" else 0  # created before the ledger
    peak = lte.train_peak(model.cfg, case.setup(adapters), dit, device_run=False)
    return ledger.peak + lora_factors, peak.state + peak.activations


CASES = {
    "lora, checkpointed": Case(grid=(9, 16, 16), depth=4),
    "lora, every block held": Case(checkpointing=False),
    "lora bf16, checkpointed": Case(dtype=torch.bfloat16, grid=(9, 16, 16), depth=4),
    "lora bf16, every block held, 2 clips": Case(dtype=torch.bfloat16, checkpointing=False, batch=2),
    "lora, a continuation (2 conditioning latent frames)": Case(checkpointing=False, grid=(9, 16, 16), cond=2),
    "lora bf16, a continuation, checkpointed": Case(dtype=torch.bfloat16, grid=(9, 16, 16), cond=3, depth=4),
    "lora, attention only": Case(checkpointing=False, targets=("attn.qkv", "attn.proj")),
    "lora, wide": Case(width=384, checkpointing=False, grid=(5, 24, 16)),
    "full, checkpointed": Case(method="full", grid=(9, 24, 24), depth=4),
    "full, every block held": Case(method="full", checkpointing=False, grid=(9, 24, 24)),
    "full, a small clip (optimizer state dominates)": Case(method="full", grid=(1, 8, 8)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_train_step_estimate(case):
    measured, predicted = measured_and_predicted(case)
    assert predicted == pytest.approx(measured, rel=0.2)


def growth(make, small, large) -> tuple[int, int]:
    """(measured, predicted) growth of the step's bytes from ``make(small)`` to ``make(large)``."""
    return measured_growth(measured_and_predicted, make(small), make(large))


#: Growth per block isolates what a block holds for backward; counted to within a few percent.
PER_BLOCK = {"lora": Case(checkpointing=False),
             "lora bf16": Case(dtype=torch.bfloat16, checkpointing=False),
             "full": Case(method="full", checkpointing=False, grid=(9, 24, 24))}


@pytest.mark.parametrize("case", PER_BLOCK.values(), ids=PER_BLOCK.keys())
def test_without_checkpointing_every_block_holds_its_tensors(case):
    measured, predicted = growth(lambda n: attrs.evolve(case, depth=n), 2, 4)
    assert predicted == pytest.approx(measured, rel=0.1)


def test_checkpointing_keeps_one_input_per_block():
    measured, predicted = growth(lambda n: Case(depth=n, grid=(9, 16, 16)), 2, 8)
    assert predicted == pytest.approx(measured, rel=0.2)


@pytest.mark.parametrize("case", [Case(checkpointing=False, depth=4), Case(method="full", depth=4)],
                         ids=["lora", "full"])
def test_what_the_prompts_slots_add(case):
    """Every slot of the padded prompt: each block's keys, values and normed keys of it, and the
    embedded prompt."""
    measured, predicted = growth(lambda n: attrs.evolve(case, text_len=n), 512, 1536)
    assert predicted == pytest.approx(measured, rel=0.1)


def test_what_a_checkpointed_steps_tokens_add():
    """Per token under checkpointing: each block's input, one recomputed block, the final layer's
    fp32 tensors, the RoPE tables and backward's working set."""
    measured, predicted = growth(lambda f: Case(depth=4, grid=(f, 16, 16)), 5, 13)
    assert predicted == pytest.approx(measured, rel=0.05)  # the working set alone is 7 % of it


def test_a_continuations_conditioning_frames_are_tokens_of_the_clip():
    """A 9-latent-frame continuation of 4 conditioning frames holds what 9 frames hold, not 5."""
    measured, predicted = growth(lambda cond: Case(checkpointing=False, grid=(9 if cond else 5, 16, 16), cond=cond),
                                 0, 4)
    assert predicted == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "every block held"])
def test_offloading_moves_what_autograd_saves(monkeypatch, checkpointing):
    monkeypatch.setattr(Offloaded, "live", 0)
    monkeypatch.setattr(Offloaded, "peak", 0)
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Offloaded)
    case = Case(checkpointing=checkpointing, depth=4, grid=(9, 16, 16))
    train, model, _, adapters = trainer(case, offload=True)
    rope_table.cache_clear()
    train.run(lambda done, state: None)
    _, _, moved = lte.activation_bytes(model.cfg, case.setup(adapters, offload=True), device_run=True)
    assert moved == pytest.approx(Offloaded.peak, rel=0.2)


def test_lora_parameters_follow_peft_matching():
    """The trained parameters, read off the Linear shapes, are what peft injects (the final layer's
    modulation included: DiffSynth's adaLN_modulation.1 target matches it too)."""
    model = LongCatDiT(Case().config()).requires_grad_(False)
    linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for targets in (TARGETS, ("attn.qkv", "ffn.w2"), ("adaLN_modulation.1",)):
        _, params, block = lte.lora_adapters(linears, adapted_modules(model, targets), 4)
        adapted = LongCatDiT(Case().config()).requires_grad_(False)
        inject_lora(adapted, targets, 4, 4.0, 0)
        trained = {n: p.numel() for n, p in adapted.named_parameters() if p.requires_grad}
        assert params == sum(trained.values())
        assert block == sum(n for name, n in trained.items() if name.startswith("blocks.0."))
