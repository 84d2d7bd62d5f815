"""benchmarks/dit_work and dit_profile: one forward's work sorted by kind, on a tiny DiT on the CPU."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F

from benchmarks import dit_profile, dit_work
from benchmarks.dit_work import (
    ATTENTION,
    CATEGORIES,
    GEMM,
    MODULATION,
    NORM,
    OTHER,
    ROPE,
    classify,
)
from benchmarks.generation import CONFIGS, Job
from wanflow.models import dit, rope
from wanflow.models.attention import attention

#: Two tiny blocks over 48 tokens, attending through the math kernel: its matmuls are aten::bmm,
#: GEMM by their name alone, attention by the function they run in.
JOB = Job(attrs.evolve(CONFIGS["tiny"], num_layers=2), (1, 16, 3, 8, 8), "cpu", torch.float32, "math")


@pytest.fixture(scope="module")
def forward():
    return dit_work.model_forward(JOB)


def test_the_innermost_function_decides_over_the_op_name():
    block = ["wanflow::block", "wanflow::forward"]
    assert classify(["aten::addcmul", "wanflow::rope", "wanflow::self_attn", *block]) == ROPE
    assert classify(["aten::addcmul", "wanflow::modulation", *block]) == MODULATION
    assert classify(["aten::bmm", "aten::einsum", "wanflow::attention", "wanflow::self_attn", *block]) == ATTENTION
    assert classify(["aten::copy_", "aten::_to_copy", "aten::to", "wanflow::gemm", *block]) == GEMM
    # outside any function of a kind, the op's name (or a composite op around it) says it
    assert classify(["aten::addmm", "aten::linear", *block]) == GEMM
    assert classify(["aten::native_layer_norm", "aten::layer_norm", *block]) == NORM
    # the block's own arithmetic is its modulation vector and the cross-attention residual
    assert classify(["aten::add", *block]) == MODULATION
    assert classify(["aten::add", "wanflow::cross_attn", *block]) == OTHER
    assert classify(["aten::addcmul", "wanflow::forward"]) == OTHER


def test_bytes_are_counted_once_per_op_as_called_and_views_move_nothing():
    x, w = torch.ones(8, 16), torch.ones(4, 16)
    stack = ["wanflow::rope"]
    with torch.inference_mode(), dit_work.Work(stack) as work:  # as the benchmark counts
        x.flatten(), x.unflatten(-1, (4, 4)), x.to(torch.float32)  # views: nothing
        x.to(torch.bfloat16)  # reads 512 bytes, writes 256
        stack.clear()
        F.layer_norm(x, (16,))  # reads and writes 512: not its decomposition's statistics too
        F.linear(x, w)  # 512 + 256 read, 128 written; 2 * 8 * 16 * 4 FLOPs
    assert +work.bytes == {ROPE: 768, NORM: 1024, GEMM: 896}
    assert dict(work.flops) == {GEMM: 2 * 8 * 16 * 4}


@pytest.mark.parametrize("kernel", ["math", "sdpa"])
def test_counted_flops_equal_the_formulas_with_attention_matmuls_in_attention(kernel):
    job = attrs.evolve(JOB, attention=kernel)
    with torch.inference_mode():
        work = dit_work.count_work(dit_work.model_forward(job))
    formula = dit_work.formula_flops(job)
    assert work.flops[GEMM] == pytest.approx(formula[GEMM], rel=1e-9)
    assert work.flops[ATTENTION] == pytest.approx(formula[ATTENTION], rel=1e-9)
    assert set(work.flops) == {GEMM, ATTENTION}


def test_the_kinds_share_out_the_profiled_forward_and_the_functions_are_restored(forward):
    with torch.inference_mode():
        forward()
        events = dit_profile.profiled_events(forward, JOB)
    profile = dit_profile.event_times(events, cuda=False)
    times, total = profile.times, profile.total
    assert sum(times.values()) == pytest.approx(total, rel=0.02)
    assert all(times[kind] > 0 for kind in (*CATEGORIES, dit_profile.PYTHON)), times
    assert {op for kind, op in profile.ops if kind == dit_profile.PYTHON} >= {"wanflow::forward", "wanflow::block"}
    assert all(op.startswith("wanflow::") for kind, op in profile.ops if kind == dit_profile.PYTHON)
    kinds = {name: {classify(dit_profile.path(e)) for e in events if e.name == name}
             for name in ("aten::bmm", "aten::addcmul")}
    assert kinds == {"aten::bmm": {ATTENTION}, "aten::addcmul": {ROPE, MODULATION, OTHER}}  # OTHER: the head's
    assert dit.apply_rope is rope.apply_rope and not hasattr(dit.Block.forward, "__wrapped__")


def test_on_cuda_each_kernel_is_charged_to_the_op_that_launched_it():
    """Events as torch.profiler gives them on CUDA (none here): kernels hang on the op that
    launched them, a range's GPU annotation spans its kernels (not work of its own), and a kernel
    no op launched is in the total only."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    def event(name, start, end, parent=None, device=DeviceType.CPU, annotation=False, kernels=()):
        e = FunctionEvent(0, name, 1, start, end, device_type=device, is_user_annotation=annotation)
        for kernel, duration in kernels:
            e.append_kernel(kernel, 0, duration)
        if parent is not None:
            e.set_cpu_parent(parent)
            parent.append_cpu_child(e)
        return e

    forward = event("wanflow::forward", 0, 100, annotation=True, kernels=[("wanflow::forward", 40)])
    ranged = event("wanflow::rope", 10, 20, forward, annotation=True, kernels=[("wanflow::rope", 9)])
    cpu = [forward, ranged, event("aten::addcmul", 11, 19, ranged, kernels=[("elementwise", 5)]),
           event("aten::addmm", 30, 40, forward, kernels=[("sm90_gemm", 20)]),
           event("aten::add", 50, 55, event("wanflow::block", 45, 60, forward, annotation=True),
                 kernels=[("elementwise", 4)]),
           event("aten::addmm", 200, 210, kernels=[("sm90_gemm", 50)])]  # after the forward
    device = [event(name, 0, duration, device=DeviceType.CUDA, annotation=name.startswith("wanflow::"))
              for name, duration in (("elementwise", 5), ("sm90_gemm", 20), ("elementwise", 4), ("memcpy", 3),
                                     ("wanflow::rope", 9), ("wanflow::forward", 40))]
    profile = dit_profile.event_times(cpu + device, cuda=True)
    assert +profile.times == pytest.approx({ROPE: 5e-6, GEMM: 20e-6, MODULATION: 4e-6})
    assert profile.total == pytest.approx(32e-6)
    assert +profile.ops == pytest.approx({(ROPE, "aten::addcmul"): 5e-6, (GEMM, "aten::addmm"): 20e-6,
                                          (MODULATION, "aten::add"): 4e-6})


def test_the_meta_device_counts_what_the_real_forward_moves():
    """--count runs the forward on the meta device with attention as SDPA's flash kernel: the
    same bytes as the real forward (whose CPU flash kernel lays its output out the same way) in
    every kind but attention (the kernels' side outputs differ), and the formulas' FLOPs."""
    job = attrs.evolve(JOB, attention="sdpa")
    forwards = {"real": dit_work.model_forward(job), "meta": dit_work.meta_forward(job)}
    with torch.inference_mode(), dit_work.swapped(dit, "attention", dit_work.flash_attention):
        forwards["meta"]()  # the RoPE tables built, as in every forward after the first
        meta = dit_work.count_work(forwards["meta"])
    with torch.inference_mode():
        forwards["real"]()
        real = dit_work.count_work(forwards["real"])
    assert {k: v for k, v in meta.bytes.items() if k != ATTENTION} == {
        k: v for k, v in real.bytes.items() if k != ATTENTION}
    assert all(meta.bytes[kind] > 0 for kind in CATEGORIES)
    assert meta.flops == pytest.approx(dit_work.formula_flops(job), rel=1e-9)
    assert dit.attention is attention
