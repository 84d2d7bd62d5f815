"""The DiT's fp32 islands hold in a bf16 model: time embedding, modulation and gates stay fp32.

The official Wan model computes the timestep embedding, ``modulation + e0`` and the use of the
resulting shift/scale/gate vectors in fp32 (under ``autocast(dtype=torch.float32)``); bf16 there
rounds away part of the timestep's effect on every block. These tests follow the data rather
than the code: every value computed from the timestep and the island weights alone must be at
least fp32, and every operation that applies such a value to the bf16 activations must compute
in fp32 (its result is rounded to bf16 only at the end, by a cast or as it is written into a bf16 `out=`).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.models._dit_fixtures import inputs, random_state, tiny_config
from wanflow.models import precision
from wanflow.models.dit import WanDiT

REDUCED = (torch.bfloat16, torch.float16)


def tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors among a call's arguments or results (nested in tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    return []


def island_parameter(name: str) -> bool:
    """The official fp32 parameters: time embedding, time projection and every modulation table."""
    return name.startswith(("time_embedding.", "time_projection.")) or name.endswith("modulation")


class IslandTrace(TorchFunctionMode):
    """Classifies every tensor a forward makes: "island" (from the timestep and island weights
    only), "activation" (touches the latents, the context or any other weight), or constant
    (neither: RoPE tables, padding). Records each operation that breaks the island rule.

    Tensors are held by id with a reference kept, so an id is never reused during the trace."""

    def __init__(self, island: dict[int, torch.Tensor], activation: dict[int, torch.Tensor]):
        super().__init__()
        self.island, self.activation = island, activation
        self.broken: list[str] = []
        self.mixed = 0  # operations that applied an island value to activations

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = tensors_in((args, kwargs or {}))
        made = [t for t in tensors_in(out) if id(t) not in self.island]
        from_island = any(id(t) in self.island for t in given)
        from_activation = any(id(t) in self.activation for t in given)
        name = getattr(func, "__name__", str(func))
        if from_island and not from_activation:
            for t in made:
                self.island[id(t)] = t
                if t.dtype in REDUCED:
                    self.broken.append(f"{name} made a {t.dtype} value from the timestep alone")
        elif from_activation:
            for t in made:
                self.activation[id(t)] = t
            if from_island:
                self.mixed += 1
                self.broken += [f"{name} applied an island value in {computed}"
                                for t in made if (computed := computed_dtype(t, args, kwargs or {})) in REDUCED]
        return out


def computed_dtype(made: torch.Tensor, args: tuple, kwargs: dict) -> torch.dtype:
    """The dtype an op computed ``made`` in: its own, or, when written into a given ``out=``
    tensor, the operands' promoted dtype (torch computes there and rounds once into ``out``)."""
    if "out" not in kwargs:
        return made.dtype
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors_in(args)])


def traced(model: WanDiT, inp: dict) -> IslandTrace:
    """Run the model once under the trace; the inputs' timesteps seed the island."""
    island = {id(inp["t"]): inp["t"]}
    island |= {id(p): p for n, p in model.named_parameters() if island_parameter(n)}
    activation = {id(v): v for k, v in inp.items() if k != "t"}
    activation |= {id(p): p for n, p in model.named_parameters() if not island_parameter(n)}
    trace = IslandTrace(island, activation)
    with torch.no_grad(), trace:
        model(**inp)
    return trace


def bf16_model(variant: str, seed: int = 0) -> WanDiT:
    cfg = tiny_config(variant)
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg, seed=seed), strict=True)
    return model.eval().set_compute_dtype(torch.bfloat16)


@pytest.mark.parametrize("native", [False, True], ids=["upcast-kernels", "bf16-kernels"])
@pytest.mark.parametrize("variant", ["t2v", "i2v", "ti2v"])
def test_the_timestep_path_never_leaves_fp32(monkeypatch, variant, native):
    """In a bf16 model, with bf16 or upcasting CPU kernels: the sinusoid, e, e0, modulation + e0
    and every shift/scale/gate are fp32 (or wider), and each modulate/gate that applies them to
    the bf16 activations computes in fp32."""
    monkeypatch.setattr(precision, "cpu_has_native", lambda _: native)
    model = bf16_model(variant)
    inp = inputs(model.cfg, seed=3, grid=(2, 4, 4))
    if variant == "ti2v":  # per-token timesteps, zero on the first frame's tokens
        tokens = 2 * 2 * 2
        inp["t"] = torch.cat([torch.zeros(4), torch.full((tokens - 4,), 700.0)])[None]
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16  # the model really is bf16
    islands = {n: p.dtype for n, p in model.named_parameters() if island_parameter(n)}
    assert set(islands.values()) == {torch.float32}, islands
    trace = traced(model, inp)
    assert trace.broken == []
    # each block applies shift/scale twice and a gate twice, the head shift/scale once
    assert trace.mixed >= 4 * model.cfg.num_layers + 1


def test_a_bf16_model_embeds_time_exactly_as_its_fp32_twin():
    """The island weights are the same fp32 tensors in both, so e and e0 are bit-equal."""
    cfg = tiny_config("t2v")
    state = random_state(cfg, seed=4)
    full, half = WanDiT(cfg), WanDiT(cfg)
    full.load_state_dict(state, strict=True)
    half.load_state_dict(state, strict=True)
    half.set_compute_dtype(torch.bfloat16)
    t = torch.tensor([999.0])
    seen: dict[str, list[torch.Tensor]] = {"full": [], "half": []}
    for name, model in (("full", full), ("half", half)):
        for module in (model.time_embedding, model.time_projection):
            module.register_forward_hook(lambda m, i, o, n=name: seen[n].append(o))
        with torch.no_grad():
            model(**{**inputs(cfg, seed=5), "t": t})
    assert len(seen["half"]) == 2
    for a, b in zip(seen["full"], seen["half"]):
        assert b.dtype == torch.float32 and torch.equal(a, b)
