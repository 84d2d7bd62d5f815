from __future__ import annotations

import attrs
import pytest

from wanflow.engine import StepSpec, plan
from wanflow.engine.plan import select_params
from wanflow.errors import EngineError

from ._fakes import Decode, Save


def _digest(_p: object) -> str:
    raise AssertionError("no file to hash")


def test_plan_orders_by_dependency_whatever_the_spec_order(world) -> None:
    resolved, pipe = world
    specs = list(reversed(pipe.steps(resolved)))
    p = plan(resolved.values, specs, "fake", lambda path: "d" * 64)
    names = [s.name for s in p.steps]
    for s in p.steps:
        for src in s.spec.inputs.values():
            assert names.index(src) < names.index(s.name)
    assert names[-3:] == ["denoise", "decode", "save"]
    assert p.downstream({"denoise"}) == {"denoise", "decode", "save"}


def test_params_are_only_those_read_and_never_policy() -> None:
    values = {"sampler.cfg": 5.0, "sampler.seed": 1, "memory.policy": "auto", "video.fps": 16}
    assert select_params(values, ("sampler.*", "memory.*"), "n") == {
        "sampler.cfg": 5.0, "sampler.seed": 1}


def test_unknown_read_names_the_step_and_key() -> None:
    with pytest.raises(EngineError, match="'decode' reads 'vae.tilde'"):
        select_params({"vae.tiled": True}, ("vae.tilde",), "decode")


def test_cycles_duplicates_and_dangling_inputs_are_refused() -> None:
    a = StepSpec("a", Decode(), inputs={"x": "b"})
    b = StepSpec("b", Save(), inputs={"y": "a"})
    with pytest.raises(EngineError, match="cycle"):
        plan({}, [a, b], "s", _digest, env={})
    with pytest.raises(EngineError, match="two steps are named 'a'"):
        plan({}, [attrs.evolve(a, inputs={}), attrs.evolve(a, inputs={})], "s", _digest, env={})
    with pytest.raises(EngineError, match=r"unknown step\(s\) \['b'\]"):
        plan({}, [a], "s", _digest, env={})


def test_missing_input_file_is_named(world, tmp_path) -> None:
    resolved, pipe = world
    values = {**resolved.values, "inputs.image": str(tmp_path / "nope.png")}
    with pytest.raises(EngineError, match="image file .*nope.png does not exist"):
        plan(values, pipe.steps(attrs.evolve(resolved, values=values)), "s",
             lambda p: p.read_bytes().hex())
