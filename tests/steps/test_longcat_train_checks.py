"""What a LongCat-Video training run cannot take under DeepSpeed, refused before anything loads:
DeepSpeed's bf16/fp16 mode casts every parameter (LongCat's fp32 layers then fail), and it holds
the model in one dtype (an fp8 base would not stay fp8). FSDP keeps each parameter's dtype."""

from __future__ import annotations

import pytest

from wanflow.recipe import load_recipe
from wanflow.steps.longcat_train_checks import deepspeed_problems

DTYPE = ('r.toml: [train].distribution = "deepspeed-zero2" with [runtime].dtype = "{dtype}" ({run} here): '
         "DeepSpeed's {run} mode casts every parameter to that dtype, and LongCat-Video's DiT keeps fp32 layers")
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


@pytest.mark.parametrize(("dtype", "run"), [("auto", "bf16"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_deepspeed_in_a_half_precision_run_is_refused_naming_the_dtype_and_the_fix(tmp_path, dtype, run):
    found = _problems(tmp_path, dtype=dtype)
    assert len(found) == 1 and found[0].startswith(DTYPE.format(dtype=dtype, run=run)), found
    assert 'set [runtime].dtype = "fp32", or use distribution = "fsdp"' in found[0]


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
