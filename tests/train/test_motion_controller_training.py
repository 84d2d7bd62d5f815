"""The motion controller trained alone inside the train step: only it changes, each sample's own
bucket id drives it, and a run stopped at a checkpoint resumes to the uninterrupted run's bits."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.models.dit import WanDiT
from wanflow.models.dit_extras import DitExtras
from wanflow.models.motion_controller import ControlledDiT, MotionController
from wanflow.train.adapters import full_state, unfreeze
from wanflow.train.batch import Batch, collate
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

GRID = (2, 4, 4)


def _model(seed: int = 0) -> ControlledDiT:
    cfg = tiny_config("t2v")
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state(cfg, seed=seed))
    dit.requires_grad_(False)
    controller = MotionController(cfg.dim)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in controller.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model = ControlledDiT(dit, controller)
    unfreeze(model)
    return model.train()


def _samples(cfg, buckets=(10.0, 90.0)) -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    return [{"context": torch.randn(1, 5, cfg.text_dim, generator=gen),
             "x0": torch.randn(1, cfg.out_dim, *GRID, generator=gen), "motion_bucket": torch.tensor([b])}
            for b in buckets]


def _trainer(model: ControlledDiT, steps: int, samples: list[dict]) -> Trainer:
    settings = Settings(task="sft", steps=steps, learning_rate=1e-3, checkpoint_every=2)
    order = batch_order([""] * len(samples), tuple(range(len(samples))), 2, 0)
    return Trainer([Expert("motion_controller", model)], settings, order,
                   lambda idx: collate([samples[i] for i in idx], "cpu"))


def test_training_changes_the_controller_alone():
    model = _model()
    dit_before = {k: v.clone() for k, v in model.dit.state_dict().items()}
    controller_before = {k: v.clone() for k, v in model.controller.state_dict().items()}
    trainer = _trainer(model, 2, _samples(model.cfg))
    assert set(trainer.params) == {f"motion_controller/controller.{k}" for k in controller_before}
    trainer.run(lambda done, state: None)
    assert all(torch.equal(v, dit_before[k]) for k, v in model.dit.state_dict().items())
    assert all(not torch.equal(v, controller_before[k]) for k, v in model.controller.state_dict().items())
    assert set(full_state(model)) == {f"controller.{k}" for k in controller_before}  # what the step stores


def test_each_sample_s_own_bucket_id_drives_the_offset():
    """A batch of two samples is the DiT called with the controller's offset for each one's id."""
    model = _model()
    samples = _samples(model.cfg)
    batch: Batch = collate(samples, "cpu")
    x, t = torch.randn_like(batch.x0), torch.tensor([500.0, 300.0])
    got = model(x, t, batch.context, motion_bucket=batch.motion_bucket)
    with torch.no_grad():
        for j, bucket in enumerate((10.0, 90.0)):
            offset = model.controller(torch.tensor([bucket])).float()
            alone = model.dit(x[j:j + 1], t[j:j + 1], batch.context[j:j + 1], extras=DitExtras(modulation=offset))
            assert torch.allclose(got[j:j + 1], alone, rtol=1e-4, atol=1e-4)
            other = model.controller(torch.tensor([100.0 - bucket])).float()  # the other sample's id
            swapped = model.dit(x[j:j + 1], t[j:j + 1], batch.context[j:j + 1], extras=DitExtras(modulation=other))
            assert not torch.allclose(got[j:j + 1], swapped, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="motion bucket id"):
        model(x, t, batch.context)


def test_a_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_bits():
    samples = _samples(tiny_config("t2v"), (10.0, 90.0, 40.0))
    straight = _trainer(_model(), 4, samples)
    straight.run(lambda done, state: None)
    saved = {}
    first = _trainer(_model(), 4, samples)
    first.run(lambda done, state: saved.setdefault(done, state))
    resumed = _trainer(_model(), 4, samples)
    resumed.load_state(saved[2])
    assert resumed.step == 2
    resumed.run(lambda done, state: None)
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert torch.tensor(resumed.history).nan_to_num().equal(torch.tensor(straight.history).nan_to_num())
