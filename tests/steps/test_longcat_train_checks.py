"""What a LongCat-Video training run cannot take under DeepSpeed, refused before anything loads:
DeepSpeed holds the model in one dtype (an fp8 base would not stay fp8). Its bf16/fp16 mode casts
every parameter, LongCat's fp32 layers too, and the DiT still trains. FSDP keeps each parameter's
dtype."""

from __future__ import annotations

import pytest
import torch

from wanflow.recipe import load_recipe
from wanflow.steps.longcat_train_checks import deepspeed_problems

FP8 = ('r.toml: [train].distribution = "{distribution}" with [memory].fp8 = true: DeepSpeed holds the model in one '
       'dtype, so the frozen base would not stay in fp8; set [memory].fp8 = false, or use distribution = "fsdp"')


def _problems(tmp_path, model: str = "longcat-video", distribution: str = "deepspeed-zero2", dtype: str = "auto",
              fp8: bool = False, method: str = "lora") -> list[str]:
    (tmp_path / "clips").mkdir(exist_ok=True)
    (tmp_path / "r.toml").write_text(
        f'model = "{model}"\n[runtime]\ndevice = "cuda"\ndtype = "{dtype}"\n[memory]\nfp8 = {str(fp8).lower()}\n'
        f'[train]\ndataset = "clips"\ndistribution = "{distribution}"\nprocesses = 2\nmethod = "{method}"\n',
        encoding="utf-8")
    return deepspeed_problems(load_recipe(tmp_path / "r.toml"), lambda key: "r.toml")


@pytest.mark.parametrize("dtype", ["auto", "bf16", "fp16"])
def test_deepspeed_takes_a_half_precision_run(tmp_path, dtype):
    assert _problems(tmp_path, dtype=dtype) == []


def test_a_longcat_dit_cast_whole_to_bf16_trains():
    """What DeepSpeed's bf16 engine does to the model (``module.bfloat16()``, its fp32 layers
    too): the DiT still runs forward and backward, close to its fp32 self."""
    from tests.models.test_longcat_model import tiny, video

    x, text = video()
    t = torch.tensor([500.0])
    reference = tiny()(x, t, text)
    cast = tiny().bfloat16().train()
    out = cast(x.bfloat16(), t, text.bfloat16())
    out.float().square().mean().backward()
    assert float((out.float() - reference).abs().max() / reference.abs().max()) < 0.02
    assert all(p.grad is not None for p in cast.parameters())


@pytest.mark.parametrize("distribution", ["deepspeed-zero2", "deepspeed-zero3"])
def test_deepspeed_over_an_fp8_base_is_refused(tmp_path, distribution):
    assert _problems(tmp_path, distribution=distribution, dtype="fp32", fp8=True) == [
        FP8.format(distribution=distribution) + ' or "ddp"']


def test_what_deepspeed_and_fsdp_take(tmp_path):
    assert _problems(tmp_path, dtype="fp32") == []  # DeepSpeed's fp32 mode keeps every dtype
    assert _problems(tmp_path, dtype="fp32", method="full") == []
    assert _problems(tmp_path, distribution="fsdp", fp8=True) == []  # FSDP keeps the fp32 layers and fp8
    assert _problems(tmp_path, distribution="ddp", fp8=True) == []
    assert _problems(tmp_path, model="wan2.1-t2v-1.3b") == []  # LongCat's own rule
