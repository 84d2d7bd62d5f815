"""Speed control's motion controller trained alone: the planner's count of what trains, read off
the controller file's header, against what the train step unfreezes; and the estimate against the
live tensor bytes of tiny training steps (the frozen DiT passes the gradient through every block
to its modulation, where the controller's offset joins)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.memory._ledger import seeded
from tests.memory.test_train_estimate import SHAPE, TrainingBytes
from tests.models._dit_fixtures import tiny_config
from wanflow.memory import train_estimate as te
from wanflow.models.dit import WanDiT
from wanflow.models.motion_controller import ControlledDiT, MotionController
from wanflow.models.rope import rope_table
from wanflow.steps.memory_plan import parts_alone
from wanflow.train.adapters import unfreeze
from wanflow.train.batch import Batch
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

GRID = (5, 16, 16)


def controlled(layers: int, checkpointing: bool) -> ControlledDiT:
    cfg = tiny_config("t2v", **SHAPE, num_layers=layers)
    dit = seeded(WanDiT(cfg))
    dit.requires_grad_(False)
    dit.gradient_checkpointing = checkpointing
    model = ControlledDiT(dit, seeded(MotionController(cfg.dim)))
    unfreeze(model)
    return model.train()


def test_the_planner_counts_what_the_train_step_unfreezes(tmp_path):
    model = controlled(2, True)
    trains = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trains) == sum(p.numel() for p in model.controller.parameters())
    assert not any(p.requires_grad for p in model.dit.parameters())
    save_file({k: v.bfloat16() for k, v in model.controller.state_dict().items()}, str(tmp_path / "c.safetensors"))
    trained, parts = parts_alone({"motion_controller": [tmp_path / "c.safetensors"]}, 2)
    assert trained.params == sum(p.numel() for p in trains)
    assert trained.weight_bytes == 4 * trained.params  # trained in fp32 whatever the file stores
    assert parts == te.Parts(0, modulated=True)


def measured_and_predicted(layers: int, checkpointing: bool) -> tuple[int, int]:
    """Bytes a CPU training step adds to the frozen weights (two optimizer steps), and the estimate."""
    model = controlled(layers, checkpointing)
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    micro = Batch(torch.randn(1, 7, cfg.text_dim, generator=gen), torch.randn(1, cfg.out_dim, *GRID, generator=gen),
                  motion_bucket=torch.tensor([40.0]))
    train = Trainer([Expert("motion_controller", model)], Settings(task="sft", steps=2, checkpoint_every=100),
                    batch_order([""], (0,), 1, 0), lambda _: micro)
    rope_table.cache_clear()
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    params = sum(p.numel() for p in model.controller.parameters())
    setup = te.TrainSetup("full", 1, GRID, 4, checkpointing, parts=te.Parts(0, modulated=True))
    peak = te.train_peak(cfg, setup, [te.Trained(0, params, 0, cfg.num_layers)], device_run=False)
    return ledger.peak, peak.state + peak.activations


@pytest.mark.parametrize("layers", [4, 8])
@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "every block held"])
def test_the_controller_s_training_step(checkpointing, layers):
    measured, predicted = measured_and_predicted(layers, checkpointing)
    assert predicted == pytest.approx(measured, rel=0.2)


def test_what_a_frozen_block_under_a_trained_modulation_keeps():
    """Four more blocks, every one held: what each keeps to pass the gradient to its modulation."""
    (m4, p4), (m8, p8) = (measured_and_predicted(layers, False) for layers in (4, 8))
    assert p8 - p4 == pytest.approx(m8 - m4, rel=0.05)
