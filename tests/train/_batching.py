"""What the batching tests compare: a batch of two samples against each sample run alone."""

from __future__ import annotations

import torch

from wanflow.train.batch import collate, velocity


def batched_and_alone(dit: torch.nn.Module, a: dict, b: dict, x: torch.Tensor,
                      t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the velocity of the batch [a, b] at x, t; the two samples' velocities each in its own
    batch, concatenated): equal when batching keeps every sample's inputs to itself."""
    with torch.no_grad():
        both = velocity(dit, collate([a, b], "cpu"), x, t)
        alone = torch.cat([velocity(dit, collate([a], "cpu"), x[:1], t[:1]),
                           velocity(dit, collate([b], "cpu"), x[1:], t[1:])])
    return both, alone
