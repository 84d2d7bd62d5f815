"""Caption dropout: which samples learn the empty prompt, and that the loop trains them on it."""

from __future__ import annotations

import attrs
import pytest
import torch

from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.models.dit import WanDiT
from wanflow.train.adapters import unfreeze
from wanflow.train.batch import Batch
from wanflow.train.captions import dropped, with_dropped
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order


def test_the_share_dropped_is_the_setting_and_the_draw_is_a_function_of_seed_step_and_position():
    positions = range(4000)
    assert not any(dropped(0.0, 0, (3, 0), positions)) and all(dropped(1.0, 0, (3, 0), positions))
    draws = dropped(0.25, 0, (3, 0), positions)
    assert 0.22 < sum(draws) / len(draws) < 0.28
    assert draws == dropped(0.25, 0, (3, 0), positions)  # a resumed run drops the same samples
    assert draws != dropped(0.25, 0, (4, 0), positions) != dropped(0.25, 1, (3, 0), positions)


def test_dropped_rows_get_the_empty_prompt_padded_to_one_length_and_the_others_are_kept():
    context = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2) + 1
    empty = torch.full((1, 5, 2), -1.0)
    out = with_dropped(context, empty, [False, True])
    assert out.shape == (2, 5, 2)
    assert torch.equal(out[0, :3], context[0]) and not out[0, 3:].any()
    assert torch.equal(out[1], empty[0])
    assert with_dropped(context, empty, [False, False]) is context


def _trainer(dropout: float, context: torch.Tensor, empty: torch.Tensor | None) -> Trainer:
    cfg = tiny_config("t2v")
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg))
    unfreeze(model)
    gen = torch.Generator().manual_seed(0)
    batch = Batch(context, torch.randn(2, cfg.out_dim, 2, 4, 4, generator=gen), None, None)
    settings = Settings(steps=1, caption_dropout=dropout, loss_weighting="uniform")
    return Trainer([Expert("dit", model)], settings, batch_order(["", ""], (0, 1), 2, 0), lambda _: batch,
                   empty_context=empty)


def test_a_dropped_caption_trains_exactly_as_a_sample_whose_prompt_was_empty():
    cfg = tiny_config("t2v")
    gen = torch.Generator().manual_seed(1)
    context = torch.randn(2, 6, cfg.text_dim, generator=gen)
    empty = torch.randn(1, 2, cfg.text_dim, generator=gen)
    captioned = _trainer(0.0, context, None)
    dropped_all = _trainer(1.0, context, empty)
    empty_prompts = _trainer(0.0, with_dropped(context, empty, [True, True]), None)
    loss = {name: float(t._loss(t.fetch((0, 1)), (0, 0), (0, 1)))
            for name, t in (("captioned", captioned), ("dropped", dropped_all), ("empty", empty_prompts))}
    assert loss["dropped"] == loss["empty"] != loss["captioned"]


def test_caption_dropout_without_the_empty_prompt_is_a_planning_error():
    with pytest.raises(ValueError, match="empty prompt"):
        _trainer(0.1, torch.zeros(2, 1, tiny_config("t2v").text_dim), None)
    assert attrs.fields(Settings).caption_dropout.default == 0.0
