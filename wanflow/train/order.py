"""Which samples each micro-batch trains on: a pure function of the seed and the batch number.

Each epoch is a seeded permutation of the training samples, cut into batches of one bucket each
(a batch's clips must share a size): a sample joins its bucket's open batch, which is emitted when
full; an epoch's unfilled batches follow at its end, so no sample is ever skipped. The number of
batches per epoch does not depend on the permutation, so micro-batch ``m`` is found without
replaying the batches before it: a resumed run reads exactly what an uninterrupted one would.
Torch-free.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import attrs


def _rng(seed: int, *stream: int) -> random.Random:
    return random.Random(f"wanflow-train:{seed}:" + ":".join(map(str, stream)))


def split_validation(count: int, held_out: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(training, validation) sample indices: ``held_out`` samples chosen by the seed, kept out
    of training to measure a validation loss; both sorted."""
    if held_out <= 0:
        return tuple(range(count)), ()
    chosen = sorted(_rng(seed, 0xFA1).sample(range(count), held_out))
    picked = set(chosen)
    return tuple(i for i in range(count) if i not in picked), tuple(chosen)


@attrs.frozen
class BatchOrder:
    """The micro-batches of training, epoch after epoch."""

    samples: tuple[int, ...]  # the training samples' indices (validation ones left out)
    buckets: tuple[str, ...]  # bucket of each dataset sample, by index
    batch_size: int
    seed: int
    _epochs: dict = attrs.field(factory=dict, eq=False, repr=False)  # epoch -> its batches (memo)

    @property
    def per_epoch(self) -> int:
        """Batches per epoch: the sum over buckets of ⌈samples / batch size⌉."""
        counts: dict[str, int] = {}
        for i in self.samples:
            counts[self.buckets[i]] = counts.get(self.buckets[i], 0) + 1
        return sum(math.ceil(n / self.batch_size) for n in counts.values())

    def batch(self, number: int) -> tuple[int, ...]:
        """The dataset indices of micro-batch ``number`` (0-based, counted over all epochs)."""
        epoch, position = divmod(number, self.per_epoch)
        if epoch not in self._epochs:
            self._epochs.clear()  # one epoch at a time is all a run reads
            self._epochs[epoch] = self._epoch(epoch)
        return self._epochs[epoch][position]

    def _epoch(self, epoch: int) -> list[tuple[int, ...]]:
        order = list(self.samples)
        _rng(self.seed, epoch).shuffle(order)
        open_batches: dict[str, list[int]] = {}
        out: list[tuple[int, ...]] = []
        for i in order:
            batch = open_batches.setdefault(self.buckets[i], [])
            batch.append(i)
            if len(batch) == self.batch_size:
                out.append(tuple(batch))
                open_batches[self.buckets[i]] = []
        out += [tuple(b) for b in open_batches.values() if b]
        return out


def batch_order(buckets: Sequence[str], samples: Sequence[int], batch_size: int, seed: int) -> BatchOrder:
    if not samples:
        raise ValueError("no training samples: every sample was held out for validation")
    return BatchOrder(tuple(samples), tuple(buckets), batch_size, seed)
