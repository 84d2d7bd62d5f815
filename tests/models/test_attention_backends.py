"""Attention backends as named plugins: what each needs, refusal at validation, keys, and use."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tests.models._dit_fixtures import inputs, random_state, tiny_config, write_checkpoint
from wanflow.errors import ModelInputError, PluginError
from wanflow.memory import pool as model_pool
from wanflow.models import attention as attn
from wanflow.plugins import build_registry, hookimpl
from wanflow.plugins import registry as registry_module
from wanflow.plugins.hookspecs import AttentionEntry
from wanflow.recipe import load_recipe
from wanflow.steps.checks import unsupported

TINY = 'model = "wanflow-tiny"\n[prompt]\ntext = "a cat"\n[runtime]\ndevice = "cpu"\n'


def _plugin(*entries: AttentionEntry, version: str = "1.2") -> types.SimpleNamespace:
    return types.SimpleNamespace(wanflow_attention_backends=hookimpl(lambda: list(entries)),
                                 __version__=version)


def _entry(name: str, kernel=attn.sdpa, problems=lambda device, dtype: [], version: str = "3") -> AttentionEntry:
    return AttentionEntry(name, version, lambda: kernel, problems)


def problems(tmp_path, text: str, registry) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return unsupported(load_recipe(path), registry)


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working folder


# ----------------------------------------------------------------------------- registration


def test_builtin_backends_register_through_the_hook():
    registry = build_registry(entry_points=False)
    assert sorted(registry.attention) == ["cudnn", "flash3", "flash4", "math", "sage", "sdpa"]
    assert {registry.owner("attention backend", n) for n in registry.attention} == {"wanflow"}
    assert registry.attention["sdpa"].load() is attn.sdpa
    assert registry.attention["flash3"].load() is attn.flash3_attention


def test_a_backend_name_collision_names_both_plugins():
    with pytest.raises(PluginError, match="attention backend 'sage' is registered by both plugin 'wanflow' "
                                          "and plugin 'fast'"):
        build_registry([("fast", _plugin(_entry("sage")))], entry_points=False)


def test_a_plugin_backend_is_keyed_by_its_plugin_and_its_own_version():
    registry = build_registry([("fast", _plugin(_entry("xformers", version="3"), version="1.2"))],
                              entry_points=False)
    assert registry.attention_uses("xformers") == ("fast@1.2", "attention.xformers@3")
    newer = build_registry([("fast", _plugin(_entry("xformers", version="4"), version="1.2"))],
                           entry_points=False)
    assert newer.attention_uses("xformers") == ("fast@1.2", "attention.xformers@4")


def test_builtin_backends_are_keyed_by_the_packages_their_kernels_come_from(monkeypatch):
    registry = build_registry(entry_points=False)
    installed = {"sageattention": "2.2.0"}
    monkeypatch.setattr(registry_module, "_installed_version", lambda dist: installed.get(dist, ""))
    assert registry.attention_uses("sdpa") == ()  # torch's version is in every key already
    assert registry.attention_uses("sage") == ("sageattention@2.2.0",)
    installed["sageattention"] = "2.3.0"
    assert registry.attention_uses("sage") == ("sageattention@2.3.0",)
    with pytest.raises(PluginError, match="no installed plugin provides the attention backend 'flash'"):
        registry.attention_uses("flash")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("backend", "why"), [
    ("flash3", "its module flash_attn_interface is not installed"),
    ("flash4", "its module flash_attn.cute is not installed (pip install --pre flash-attn-4)"),
    ("sage", "its module sageattention is not installed (pip install sageattention)"),
    ("cudnn", "it needs a CUDA device (this run's device is cpu)"),
])
def test_a_backend_that_cannot_run_here_is_refused_at_validation(tmp_path, backend, why):
    registry = build_registry(entry_points=False)
    found = problems(tmp_path, TINY + f'attention = "{backend}"\n', registry)
    assert len(found) == 1, found
    assert found[0].startswith(f'r.toml: [runtime].attention = "{backend}": cannot run here: ')
    assert why in found[0]
    assert found[0].endswith('(available here: math, sdpa); use "sdpa" (the default), or run where it can')


def test_the_dtype_a_backend_needs_is_checked_against_the_dit_dtype(tmp_path):
    registry = build_registry(entry_points=False)
    found = problems(tmp_path, TINY + 'attention = "cudnn"\n', registry)
    assert "it computes in bf16 or fp16 only (the DiT runs in fp32)" in found[0]
    found = problems(tmp_path, TINY + 'attention = "cudnn"\n[models.dit]\ndtype = "bf16"\n', registry)
    assert "bf16 or fp16 only" not in found[0]


def test_a_plugin_backend_says_why_it_cannot_run(tmp_path):
    def picky(device: str, dtype: str) -> list[str]:
        return [] if dtype == "fp16" else [f"it needs fp16, not {dtype}"]

    registry = build_registry([("fast", _plugin(_entry("half", problems=picky)))], entry_points=False)
    found = problems(tmp_path, TINY + 'attention = "half"\n', registry)
    assert found == ['r.toml: [runtime].attention = "half": cannot run here: it needs fp16, not fp32 '
                     '(available here: math, sdpa); use "sdpa" (the default), or run where it can']
    assert problems(tmp_path, TINY + 'attention = "half"\ndtype = "fp16"\n', registry) == []


def test_an_unknown_backend_lists_those_that_run_here(tmp_path):
    registry = build_registry([("fast", _plugin(_entry("anywhere")))], entry_points=False)
    found = problems(tmp_path, TINY + 'attention = "flash"\n', registry)
    assert found == ['r.toml: [runtime].attention = "flash": no attention backend of that name is installed '
                     '(available: anywhere, math, sdpa); use "sdpa", or install the plugin that registers "flash"']


# ----------------------------------------------------------------------------- what each needs


@pytest.fixture
def hopper(monkeypatch):
    """A machine whose torch sees a CUDA GPU of a settable compute capability."""
    gpu = {"capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: gpu["capability"])
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(attn, "installed", lambda module: True)
    return gpu


def test_flash3_needs_a_hopper_gpu(hopper):
    assert attn.backend_problems("flash3", "cuda", "bf16") == []
    hopper["capability"] = (8, 0)
    assert attn.backend_problems("flash3", "cuda", "bf16") == ["it needs a Hopper GPU (sm90: H100, H200, H20) "
                                                               "(this GPU is sm80)"]
    assert attn.backend_problems("sage", "cuda:0", "fp16") == []
    assert attn.backend_problems("cudnn", "cuda", "bf16") == []


@pytest.mark.parametrize(("capability", "runs"), [((7, 5), False), ((8, 0), True), ((9, 0), True),
                                                  ((10, 0), True), ((12, 0), True), ((13, 0), False)])
def test_flash4_runs_from_ampere_to_blackwell(hopper, capability, runs):
    hopper["capability"] = capability
    found = attn.backend_problems("flash4", "cuda", "bf16")
    major, minor = capability
    assert found == ([] if runs else [f"it needs an Ampere, Hopper or Blackwell GPU (sm80 to sm12x) "
                                      f"(this GPU is sm{major}{minor})"])


def test_flash4_is_keyed_by_its_package_and_the_dsl_that_compiles_it(monkeypatch):
    registry = build_registry(entry_points=False)
    installed = {"flash-attn-4": "4.0.0b36", "nvidia-cutlass-dsl": "4.8.1"}
    monkeypatch.setattr(registry_module, "_installed_version", lambda dist: installed.get(dist, ""))
    assert registry.attention_uses("flash4") == ("flash-attn-4@4.0.0b36", "nvidia-cutlass-dsl@4.8.1")
    installed["nvidia-cutlass-dsl"] = "4.9.0"
    assert registry.attention_uses("flash4") == ("flash-attn-4@4.0.0b36", "nvidia-cutlass-dsl@4.9.0")


def test_half_precision_kernels_refuse_fp32_even_on_a_gpu(hopper):
    for name in ("flash3", "flash4", "sage", "cudnn"):
        assert attn.backend_problems(name, "cuda", "fp32") == ["it computes in bf16 or fp16 only (the DiT runs in fp32)"]
    assert attn.backend_problems("sdpa", "cpu", "fp32") == attn.backend_problems("math", "cuda", "bf16") == []


def test_an_uninstalled_kernel_is_not_usable_and_says_how_to_install_it():
    if attn.installed("flash_attn_interface"):
        pytest.skip("FlashAttention 3 is installed here")
    assert "flash3" not in attn.KERNELS
    with pytest.raises(ModelInputError, match="'flash3' is not registered \\(its module flash_attn_interface is "
                                              "not installed: build it from FlashAttention's hopper/ folder"):
        attn.check_kernel("flash3")


def test_use_kernel_registers_once_and_refuses_another_kernel_under_the_name(monkeypatch):
    monkeypatch.setattr(attn, "KERNELS", dict(attn.KERNELS))

    def mine(q, k, v):
        return attn.sdpa(q, k, v)

    assert attn.use_kernel("mine", mine) == "mine" and attn.KERNELS["mine"] is mine
    attn.use_kernel("mine", mine)  # the same kernel again: nothing to do
    with pytest.raises(ModelInputError, match="'mine' is already registered"):
        attn.use_kernel("mine", attn.math_attention)


def test_the_pool_attends_with_a_plugin_kernel(tmp_path, monkeypatch):
    """A plugin's kernel handed to the pool is what the DiT's attentions call."""
    monkeypatch.setattr(attn, "KERNELS", dict(attn.KERNELS))
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return attn.math_attention(q, k, v)

    cfg = tiny_config("t2v")
    write_checkpoint(tmp_path / "dit", cfg, random_state(cfg, seed=3))
    files = [tmp_path / "dit" / "diffusion_pytorch_model.safetensors", tmp_path / "dit" / "config.json"]
    model_pool.clear()
    try:
        plugin = model_pool.dit(files, torch.float32, "cpu", "counting", kernel=counting)
        reference = model_pool.dit(files, torch.float32, "cpu", "sdpa")
        inp = inputs(cfg, seed=4)
        with torch.no_grad():
            out, expected = plugin(**inp), reference(**inp)
    finally:
        model_pool.clear()
    assert len(calls) == 2 * cfg.num_layers  # self- and cross-attention of every block
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


# ----------------------------------------------------------------------------- numbers


def _qkv(device: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 77, 4, 64, generator=gen).to(device, dtype) for _ in range(3))


#: Largest difference from the fp32 math reference, relative to its largest value, per backend in
#: bf16: one bf16 rounding of the output is 0.4 %; SageAttention also rounds QK^T to INT8.
BF16_TOLERANCE = {"sage": 0.05}


@pytest.mark.parametrize("name", ["sdpa", "math", "cudnn", "flash3", "flash4", "sage"])
def test_every_backend_that_runs_here_computes_attention(name):
    """Where a GPU and the packages are there, each backend against the fp32 reference; on a CPU
    the torch kernels alone."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bf16" if device == "cuda" else "fp32"
    why = attn.backend_problems(name, device, dtype)
    if why:
        pytest.skip("; ".join(why))
    q, k, v = _qkv(device, torch.bfloat16 if dtype == "bf16" else torch.float32)
    reference = attn.math_attention(q.float(), k.float(), v.float())
    out = attn.KERNELS[name](q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    off = ((out.float() - reference).abs().max() / reference.abs().max()).item()
    assert off < (BF16_TOLERANCE.get(name, 0.01) if dtype == "bf16" else 1e-5), off


@pytest.fixture
def fake_flash4(monkeypatch):
    """A stand-in ``flash_attn.cute`` that attends as torch does and returns (out, lse) as FA4."""
    calls = []

    def flash_attn_func(q, k, v):
        torch._dynamo.graph_break()  # as the DSL's Python: nothing dynamo can trace
        calls.append(q.requires_grad)
        return attn.math_attention(q, k, v), torch.zeros(q.shape[:3])

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    return calls


def test_flash4_compiles_as_one_opaque_op(fake_flash4):
    """A compiled block (``[runtime].compile``) keeps FA4 whole: the op's shape rule stands in for
    the kernel while tracing, and the compiled result is the eager one."""
    q, k, v = _qkv("cpu", torch.float32)

    def block(q, k, v):
        return attn.flash4_attention(q * 2, k, v) + 1

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attn.math_attention(q * 2, k, v) + 1)
    assert fake_flash4 == [False]  # run once, by the op, never traced into


def test_flash4_trains_through_the_package_autograd(fake_flash4):
    q, k, v = (t.requires_grad_() for t in _qkv("cpu", torch.float32))
    attn.flash4_attention(q, k, v).sum().backward()
    assert fake_flash4 == [True] and q.grad is not None and q.grad.abs().sum() > 0
