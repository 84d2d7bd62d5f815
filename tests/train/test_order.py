"""The data order: a pure function of (seed, batch number), one bucket per batch, nothing skipped."""

from __future__ import annotations

from collections import Counter

from wanflow.train.order import batch_order, split_validation

BUCKETS = ["a", "b", "a", "a", "b", "c", "a"]


def test_each_epoch_covers_every_sample_once_in_batches_of_one_bucket():
    order = batch_order(BUCKETS, range(7), batch_size=2, seed=3)
    assert order.per_epoch == 2 + 1 + 1  # a: 4 samples -> 2 batches, b: 1, c: 1
    for epoch in range(3):
        batches = [order.batch(epoch * order.per_epoch + i) for i in range(order.per_epoch)]
        assert Counter(i for b in batches for i in b) == Counter(range(7))
        assert all(len({BUCKETS[i] for i in b}) == 1 for b in batches)
        assert all(len(b) <= 2 for b in batches)


def test_batches_are_found_without_replaying_the_run_and_epochs_differ():
    a = batch_order(BUCKETS, range(7), batch_size=1, seed=3)
    b = batch_order(BUCKETS, range(7), batch_size=1, seed=3)
    assert [a.batch(n) for n in (20, 3, 15)] == [b.batch(n) for n in (20, 3, 15)]  # any order of asking
    first = [a.batch(n) for n in range(7)]
    second = [a.batch(n) for n in range(7, 14)]
    assert first != second and sorted(first) == sorted(second)
    assert [batch_order(BUCKETS, range(7), 1, seed=4).batch(n) for n in range(7)] != first


def test_held_out_samples_are_chosen_by_the_seed_and_never_train():
    train, held = split_validation(10, 3, seed=1)
    assert len(held) == 3 and set(train) | set(held) == set(range(10)) and not set(train) & set(held)
    assert split_validation(10, 3, seed=1) == (train, held)
    order = batch_order(["x"] * 10, train, batch_size=1, seed=0)
    seen = {i for n in range(order.per_epoch * 2) for i in order.batch(n)}
    assert seen == set(train)
    assert split_validation(5, 0, seed=0) == ((0, 1, 2, 3, 4), ())
