from __future__ import annotations

from pathlib import Path

import pytest

from wanflow.engine.keys import (
    EXCLUDED_POLICY_FIELDS, canonical_json, digest_bytes, is_policy_field, key_of)
from wanflow.errors import EngineError


def test_canonical_json_ignores_order_and_container_kind() -> None:
    a = {"b": (1, 2), "a": {"y": 1.5, "x": -0.0}}
    b = {"a": {"x": 0.0, "y": 1.5}, "b": [1, 2]}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":0.0,"y":1.5},"b":[1,2]}'
    assert key_of(a) == key_of(b)


def test_canonical_json_keeps_meaningful_differences() -> None:
    assert key_of({"cfg": 5.0}) != key_of({"cfg": 5.000001})
    assert key_of({"tile": [30, 52]}) != key_of({"tile": [52, 30]})
    assert key_of({"seed": 1}) != key_of({"seed": "1"})


def test_paths_become_content_digests(tmp_path: Path) -> None:
    one, two = tmp_path / "a.bin", tmp_path / "b.bin"
    one.write_bytes(b"same")
    two.write_bytes(b"same")
    dig = lambda p: digest_bytes(p.read_bytes())  # noqa: E731
    assert canonical_json({"w": one}, dig) == canonical_json({"w": two}, dig)
    two.write_bytes(b"other")
    assert canonical_json({"w": one}, dig) != canonical_json({"w": two}, dig)


def test_non_finite_and_unknown_values_are_refused() -> None:
    with pytest.raises(EngineError, match="non-finite"):
        canonical_json({"cfg": float("nan")})
    with pytest.raises(EngineError, match="type object"):
        canonical_json({"x": object()})


@pytest.mark.parametrize("key", ["memory.policy", "memory.limit_gb", "progress.bar", "log.format"])
def test_policy_fields_are_excluded(key: str) -> None:
    assert is_policy_field(key)


@pytest.mark.parametrize("key", ["model.dtype", "model.fp8", "model.attention", "vae.tiled",
                                 "sampler.noise_device", "sampler.teacache_threshold",
                                 "memory.fp8", "sampler.seed"])
def test_fields_that_change_numbers_are_included(key: str) -> None:
    assert not is_policy_field(key)
    assert all("dtype" not in p and "fp8" not in p for p in EXCLUDED_POLICY_FIELDS)


def test_the_effective_runtime_enters_every_key(world, cache):
    """"auto" resolves per machine: a result computed on the CPU must never serve a GPU run."""
    import attrs

    from wanflow.engine.runner import plan_job

    resolved, pipe = world
    on_cpu = plan_job(resolved, pipe, cache)
    on_gpu = plan_job(resolved, attrs.evolve(pipe, device="cuda"), cache)
    assert on_cpu.env["device"] == "cpu" and on_gpu.env["device"] == "cuda"
    cpu_keys = {s.name: key_of(s.fingerprint({}, on_cpu.env)) for s in on_cpu.steps}
    gpu_keys = {s.name: key_of(s.fingerprint({}, on_gpu.env)) for s in on_gpu.steps}
    assert all(cpu_keys[n] != gpu_keys[n] for n in cpu_keys)


def test_a_field_keyed_when_set_leaves_the_default_s_key_as_before() -> None:
    """A field added to a step kind for a new computation keeps every existing key."""
    import attrs

    from wanflow.engine.step import KEYED_WHEN_SET, step_config

    @attrs.frozen
    class Before:
        mode: str = "a"

    @attrs.frozen
    class After:
        mode: str = "a"
        parts: tuple[str, ...] = attrs.field(default=(), metadata=KEYED_WHEN_SET)

    assert step_config(After()) == step_config(Before()) == {"mode": "a"}
    assert step_config(After(parts=("controller",))) == {"mode": "a", "parts": ("controller",)}
    assert key_of(step_config(After(parts=("controller",)))) != key_of(step_config(Before()))
