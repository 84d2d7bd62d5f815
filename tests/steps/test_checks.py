"""What the Wan pipeline cannot honour is found at validation, before any model loads: settings not
built yet, what this machine or these plugins lack, and input files that cannot be read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wanflow.errors import PluginError
from wanflow.output import save_mp4
from wanflow.recipe import load_recipe
from wanflow.steps import checks, input_checks
from wanflow.steps.checks import unsupported

TINY = 'model = "wanflow-tiny"\n[prompt]\ntext = "a cat"\n'
I2V = 'model = "wan2.1-i2v-14b-480p"\n[prompt]\ntext = "a cat"\n'
TINY_DIT = Path(__file__).resolve().parents[2] / "wanflow" / "assets" / "wanflow-tiny" / "dit"


def problems(tmp_path: Path, text: str, *sets: str, catalog: object = None) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return unsupported(load_recipe(path, sets=sets), catalog)


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working folder


def test_a_plain_recipe_has_no_problem(tmp_path):
    assert problems(tmp_path, TINY) == []


def test_a_train_table_has_its_dataset_checked(tmp_path):
    (tmp_path / "data.csv").write_text("video,prompt\n")
    found = problems(tmp_path, 'model = "wanflow-tiny"\n[train]\ndataset = "data.csv"\n')
    assert found == ["r.toml: [train].dataset: data.csv: holds no rows; add a row per clip (video or image, prompt)"]


@pytest.mark.parametrize("policy", ["stream", "disk", "offload"])
def test_every_memory_policy_is_honoured(tmp_path, policy):
    assert problems(tmp_path, TINY, f"memory.policy={policy}") == []


def test_cuda_on_a_machine_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "cuda_available", lambda: False)
    found = problems(tmp_path, TINY + '[runtime]\ndevice = "cuda"\n[sampler]\nnoise_device = "cuda"\n')
    assert found == ['r.toml: [runtime].device = "cuda": this machine has no CUDA device that torch can use; '
                     'use "auto" (CUDA when present, else the CPU) or "cpu"',
                     'r.toml: [sampler].noise_device = "cuda": this machine has no CUDA device that torch can '
                     'use; use "cpu" (the same noise for a seed on every machine)']
    monkeypatch.setattr(checks, "cuda_available", lambda: True)
    assert problems(tmp_path, TINY + '[runtime]\ndevice = "cuda"\n') == []


def test_an_attention_backend_that_is_not_installed(tmp_path):
    found = problems(tmp_path, TINY + '[runtime]\nattention = "flash"\n')
    assert found == ['r.toml: [runtime].attention = "flash": no attention backend of that name is installed '
                     '(available: math, sdpa); use "sdpa", or install the plugin that registers "flash"']
    assert problems(tmp_path, TINY + '[runtime]\nattention = "math"\n') == []


def test_fp8_matmuls_where_the_gpu_has_no_fp8_tensor_cores(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(checks, "cuda_available", lambda: True)
    monkeypatch.setattr(checks, "_fp8_problems", lambda values, where: [])  # fp8 storage itself: cast on the device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 0))
    fp8 = TINY + '[runtime]\ndevice = "cuda"\nfp8_matmul = true\n[memory]\nfp8 = true\n'
    assert problems(tmp_path, fp8) == [
        "r.toml: [runtime].fp8_matmul = true: cannot run here: it needs a GPU with fp8 tensor cores, sm89 or "
        "later (Ada, Hopper, Blackwell); this GPU is sm80; set it to false (the fp8 weights are then "
        "multiplied in the compute dtype)"]
    assert len(problems(tmp_path, fp8 + '[models.dit]\ndtype = "fp16"\n')) == 1  # and the fp16 DiT, in one line
    assert "bf16 only (the DiT runs in fp16)" in problems(tmp_path, fp8 + '[models.dit]\ndtype = "fp16"\n')[0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert problems(tmp_path, fp8) == []


class _Catalog:
    """The plugin registry as a bound pipeline sees it."""

    def __init__(self, *formats: str):
        self.savers = dict.fromkeys(formats)

    def provided(self, what: str, name: str) -> tuple[object, str]:
        if name not in self.savers:
            raise PluginError(f"no installed plugin provides the {what} {name!r}")
        return self.savers[name], ""


def test_an_output_format_that_no_plugin_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_NO_PLUGINS", "1")
    found = problems(tmp_path, TINY + '[output]\nformat = "gif"\n', catalog=_Catalog("mp4"))
    assert found == ['r.toml: [output].format = "gif": no installed plugin saves this format (installed '
                     'formats: mp4); the wanflow-gif plugin provides it: pip install wanflow-gif (plugins are '
                     'turned off here: --no-plugins or WANFLOW_NO_PLUGINS=1)']
    assert problems(tmp_path, TINY + '[output]\nformat = "gif"\n', catalog=_Catalog("mp4", "gif")) == []


def test_an_input_image_that_cannot_be_decoded(tmp_path):
    (tmp_path / "noise.png").write_bytes(bytes(range(7, 250)))
    found = problems(tmp_path, I2V + '[inputs]\nimage = "noise.png"\n')
    assert len(found) == 1 and found[0].startswith('r.toml: [inputs].image = "noise.png": not a readable image')
    assert "it looks like unknown binary data starting 07 08 09" in found[0]
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "noise.png")
    assert problems(tmp_path, I2V + '[inputs]\nimage = "noise.png"\n') == []


def test_a_truncated_image_is_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    found = problems(tmp_path, I2V + '[inputs]\nimage = "cut.png"\n')
    assert len(found) == 1 and "not a readable image" in found[0] and "a PNG image" in found[0]


def _video(path: Path, frames: int) -> None:
    save_mp4(np.zeros((frames, 32, 32, 3), np.uint8), path, 8, {}, quality=0)


def test_a_source_video_with_too_few_frames(tmp_path):
    _video(tmp_path / "short.mp4", 6)
    v2v = TINY + '[inputs]\nvideo = "short.mp4"\n[sampler]\ndenoising_strength = 0.5\n'
    found = problems(tmp_path, v2v)
    assert found == ['r.toml: [inputs].video = "short.mp4": the video has 6 frames, fewer than the 17 of '
                     '[video].frames (video-to-video reads one input frame per output frame); use a longer '
                     'video or set [video].frames = 5 (the largest 4n+1 ≤ 6)']
    assert problems(tmp_path, v2v, "video.frames=5") == []


def test_a_source_video_that_cannot_be_decoded(tmp_path):
    (tmp_path / "clip.mp4").write_text("not a video")
    found = problems(tmp_path, TINY + '[inputs]\nvideo = "clip.mp4"\n[sampler]\ndenoising_strength = 0.5\n')
    assert len(found) == 1 and found[0].startswith('r.toml: [inputs].video = "clip.mp4": not a readable video (')
    assert found[0].endswith("it looks like text, 11 bytes; use an mp4, mov, mkv or webm file")


def test_a_folder_source_without_the_components_files(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("download here")
    (tmp_path / "weights" / "old").mkdir()
    found = problems(tmp_path, TINY + '[models.dit]\nsource = "weights"\n')
    assert found == ['r.toml: [models.dit].source = "weights": is a folder without the dit files (nothing '
                     'matches dit/*); it holds 2 entries: notes.txt, old/; name the weight file itself, or a '
                     "folder laid out like the model's repository, or set [models.dit].files to the patterns "
                     "of the files inside it"]


def test_a_folder_laid_out_like_the_repository_is_a_valid_source(tmp_path):
    shutil.copytree(TINY_DIT, tmp_path / "repo" / "dit")
    assert problems(tmp_path, TINY + '[models.dit]\nsource = "repo"\n') == []
    assert problems(tmp_path, TINY + '[models.dit]\nsource = "repo/dit"\nfiles = ["*"]\n') == []
    (tmp_path / "repo" / "dit" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10" + bytes(7))
    found = problems(tmp_path, TINY + '[models.dit]\nsource = "repo"\n')
    assert found == ['r.toml: [models.dit].source = "repo": dit/diffusion_pytorch_model.safetensors is 8 bytes '
                     "but its header alone needs 24: an interrupted download; download it again"]
    single = problems(tmp_path, TINY + '[models.dit]\nsource = "repo/dit/diffusion_pytorch_model.safetensors"\n')
    assert single == ['r.toml: [models.dit].source = "repo/dit/diffusion_pytorch_model.safetensors": is 8 bytes '
                      "but its header alone needs 24: an interrupted download; download the file again"]


def test_every_problem_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "cuda_available", lambda: False)
    (tmp_path / "noise.png").write_bytes(b"\x89PNG broken")
    text = (I2V + '[inputs]\nimage = "noise.png"\n[runtime]\ndevice = "cuda"\nattention = "sage"\n'
            '[memory]\npolicy = "disk"\n')
    assert len(problems(tmp_path, text)) == 3  # the image, CUDA, the attention backend


def test_media_answers_are_remembered_until_the_file_changes(tmp_path):
    _video(tmp_path / "v.mp4", 9)
    path = tmp_path / "v.mp4"
    input_checks.video_frames.cache_clear()
    assert input_checks.video_frames(path, 9, *input_checks._stamp(path)) == (9, "")
    assert input_checks.video_frames(path, 20, *input_checks._stamp(path)) == (9, "")
    assert input_checks.video_frames.cache_info().misses == 2


@pytest.mark.parametrize(("sets", "message"), [
    (("sampler.cfg_zero_init_steps=1",), "zero-init belongs to CFG-Zero*"),
    (("sampler.cfg=3", "sampler.slg_blocks=[1]", "sampler.slg_start=0.9", "sampler.slg_end=0.5"), "ends before it starts"),
    (("sampler.cfg_zero_star=true", "sampler.cfg=1"), "cfg = 1 runs none"),
])
def test_guidance_settings_that_cannot_act_are_refused(tmp_path, sets, message):
    found = problems(tmp_path, TINY, *sets)
    assert len(found) == 1 and message in found[0] and found[0].startswith("--set: [sampler].")


def test_sliding_windows_larger_than_the_clip_are_refused(tmp_path):
    found = problems(tmp_path, TINY, "sampler.sliding_window_size=9", "sampler.sliding_window_stride=4")
    assert len(found) == 1 and "sliding_window_size" in found[0]


def test_a_window_is_measured_against_the_clip_s_latent_frames(tmp_path):
    """81 video frames are 21 latent frames: a window of up to 21 fits, 22 does not."""
    window = ("video.frames=81", "sampler.sliding_window_stride=4")
    assert problems(tmp_path, TINY, *window, "sampler.sliding_window_size=21") == []
    (found,) = problems(tmp_path, TINY, *window, "sampler.sliding_window_size=22")
    assert "the clip has 21 latent frames ([video].frames = 81)" in found


def test_flex_sparse_attention_where_torch_has_no_flex_attention(tmp_path, monkeypatch, capsys):
    from wanflow.cli import main
    from wanflow.families.longcat import REFINE_LORA, REPO
    from wanflow.models import longcat_bsa_params

    refine = ('model = "longcat-video"\n[prompt]\ntext = "a cat"\n[inputs]\nlongcat_refine = true\n[[lora]]\n'
              f'source = "modelscope:{REPO}"\nfile = "{REFINE_LORA}"\ntarget = "refine"\n[runtime]\n')
    assert problems(tmp_path, refine + 'sparse_attention = "flex"\n') == []  # this torch has it
    monkeypatch.setattr(longcat_bsa_params, "torch_has_flex", lambda version=None: False)
    found = problems(tmp_path, refine + 'sparse_attention = "flex"\n')
    assert len(found) == 1 and found[0].startswith('r.toml: [runtime].sparse_attention = "flex": this torch (')
    assert 'has no FlexAttention (torch 2.5 or later); use "gather" or "auto"' in found[0]
    assert problems(tmp_path, refine + 'sparse_attention = "auto"\n') == []  # auto falls back to gather
    assert main(["validate", "r.toml", "--set", "runtime.sparse_attention=flex"]) == 2
    err = capsys.readouterr().err
    assert "[runtime].sparse_attention" in err and "has no FlexAttention" in err and "Traceback" not in err
