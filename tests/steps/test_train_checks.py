"""What a training stage needs from files and packages is refused at validation, before any model loads:
the dataset (every bad row, under [train].dataset), LoRA targets that match no Linear module of the DiT
(read from its header; skipped when the weights are not here), LoRA files to start from, engines and
optimizers that are not installed, export dialects the writer lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from tests._offline import offline_here
from tests.train.test_dataset import _video
from wanflow.families.spec import FamilySpec
from wanflow.memory.sizes import TensorInfo
from wanflow.plugins import build_registry
from wanflow.recipe import load_recipe
from wanflow.steps import train_checks
from wanflow.steps.checks import unsupported
from wanflow.steps.train_targets import modules_of, official_names
from wanflow.train import Sizing, load_dataset

TINY = 'model = "wanflow-tiny"\n[train]\ndataset = "clips"\n'
REAL_INSTALLED = train_checks.installed
#: A14B with the high-noise expert's weights in a local file (the low-noise expert's are absent).
A14B = ('model = "wan2.2-t2v-a14b"\n[models.dit_high_noise]\nsource = "high.safetensors"\n'
        '[train]\ndataset = "clips"\n')


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    """Messages name files relative to tmp_path; no downloaded weights; every package "installed"."""
    offline_here(tmp_path, monkeypatch)
    monkeypatch.setattr(train_checks, "installed", lambda module: True)
    (tmp_path / "clips").mkdir()
    for i in range(2):
        _video(tmp_path / "clips" / f"clip{i}.mp4", 9, 64, 48)
        (tmp_path / "clips" / f"clip{i}.txt").write_text(f"clip {i}", encoding="utf-8")


def problems(tmp_path: Path, text: str, *sets: str) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return unsupported(load_recipe(path, sets=sets))


def write_lora(path: Path, modules: dict[str, int], extra: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A DiffSynth-layout LoRA: module -> rank (the tiny DiT's width is 128)."""
    tensors = {}
    for module, rank in modules.items():
        tensors[f"{module}.lora_A.default.weight"] = np.zeros((rank, 128), np.float32)
        tensors[f"{module}.lora_B.default.weight"] = np.zeros((128, rank), np.float32)
    tensors |= {k: np.zeros(shape, np.float32) for k, shape in (extra or {}).items()}
    save_file(tensors, str(path))
    return path


def write_dit(path: Path, names: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: np.zeros(shape, np.float32) for k, shape in names.items()}, str(path))
    return path


def test_a_good_training_recipe_has_no_problem(tmp_path):
    assert problems(tmp_path, TINY) == []
    assert problems(tmp_path, TINY + 'lora_targets = ["q", "self_attn.o", "blocks.0.ffn.0"]\n') == []


def test_every_bad_row_of_the_dataset_is_reported_under_train_dataset(tmp_path):
    (tmp_path / "meta.csv").write_text("video,prompt\nclips/clip0.mp4,a clip\ngone.mp4,missing\n"
                                       "clips/clip1.mp4,\n", encoding="utf-8")
    found = problems(tmp_path, TINY.replace('"clips"', '"meta.csv"'))
    assert found == [
        "r.toml: [train].dataset: meta.csv row 2 (line 3): video = 'gone.mp4': gone.mp4 does not exist; fix the "
        "path (relative paths resolve against .)",
        'r.toml: [train].dataset: meta.csv row 3 (line 4): column "prompt" is empty; write the clip\'s prompt there']


def test_a_clip_without_its_caption_is_named(tmp_path):
    (tmp_path / "clips" / "clip1.txt").unlink()
    assert problems(tmp_path, TINY) == [
        "r.toml: [train].dataset: clips row 2 (clip1.mp4): caption file clips/clip1.txt does not exist; write the "
        "clip's prompt into it"]


def test_a_video_shorter_than_every_frame_bucket_is_refused(tmp_path):
    found = problems(tmp_path, TINY + "frames = 17\nframe_buckets = [17]\n")
    assert len(found) == 2 and all("the video has 9 frames, too short for the frame buckets 17" in p
                                   for p in found), found


def test_image_rows_are_refused_for_a_video_to_video_family(tmp_path):
    tiny = build_registry(entry_points=False).family("wanflow-tiny")
    v2v = FamilySpec("toy-v2v", "video to video only", tiny.components, tiny.defaults,
                     accepted_inputs=frozenset({"video"}), required_inputs=frozenset({"video"}))
    Image.new("RGB", (64, 48)).save(tmp_path / "clips" / "still.png")
    (tmp_path / "clips" / "still.txt").write_text("a still", encoding="utf-8")
    dataset = load_dataset(tmp_path / "clips", sizing=Sizing(16, max_frames=9), accepted_inputs={"video"})
    assert train_checks.video_only_problems(dataset, v2v, "r.toml: [train].dataset") == [
        "r.toml: [train].dataset: row 3 is an image, but toy-v2v turns a source video into another and trains on "
        "videos only; use video clips (or train a family that takes images)"]
    assert train_checks.video_only_problems(dataset, tiny, "r.toml: [train].dataset") == []  # T2V takes images


def test_held_out_samples_and_the_batch_must_leave_something_to_train_on(tmp_path):
    assert problems(tmp_path, TINY + "validation_samples = 1\nbatch_size = 1\n") == []
    assert problems(tmp_path, TINY + "validation_samples = 2\n") == [
        "r.toml: [train].validation_samples = 2: the dataset has 2 samples, so none would be left to train on; "
        "use at most 1"]
    assert problems(tmp_path, TINY + "validation_samples = 1\nbatch_size = 2\n") == [
        "r.toml: [train].batch_size = 2: an epoch holds only 1 training sample; use a batch of at most 1, or add "
        "samples"]
    assert problems(tmp_path, TINY + "validation_samples = 1\nbatch_size = 2\nrepeat = 2\n") == []


@pytest.mark.parametrize(("distribution", "absent", "expected"), [
    ("deepspeed-zero3", {"deepspeed"}, 'r.toml: [train].distribution = "deepspeed-zero3": needs deepspeed, which is '
                                       "not installed; pip install deepspeed, or choose another distribution"),
    ("deepspeed-zero2", {"deepspeed", "accelerate"}, "needs accelerate and deepspeed, which are not installed; "
                                                     "pip install accelerate deepspeed"),
    ("fsdp", {"accelerate"}, 'r.toml: [train].distribution = "fsdp": needs accelerate, which is not installed'),
    ("ddp", {"deepspeed"}, None),
])
def test_a_distribution_whose_engine_is_not_installed(tmp_path, monkeypatch, distribution, absent, expected):
    monkeypatch.setattr(train_checks, "installed", lambda module: module not in absent)
    found = [p for p in problems(tmp_path, TINY + f'distribution = "{distribution}"\nprocesses = 2\n')
             if "not installed" in p]
    assert (found == []) if expected is None else (len(found) == 1 and expected in found[0]), found


def test_fsdp_and_deepspeed_are_refused_without_cuda_and_over_two_experts_not_one(tmp_path):
    for distribution in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        found = problems(tmp_path, TINY + f'distribution = "{distribution}"\nprocesses = 2\n')
        assert found == [f'r.toml: [train].distribution = "{distribution}": FSDP and DeepSpeed run only on CUDA GPUs '
                         '(on the CPU accelerate would fall back to DDP); use "ddp" here, or train on a machine '
                         "with GPUs"]
    assert problems(tmp_path, TINY + 'distribution = "ddp"\nprocesses = 2\n') == []
    a14b = 'model = "wan2.2-t2v-a14b"\n[train]\ndataset = "clips"\n'
    found = problems(tmp_path, a14b + 'distribution = "deepspeed-zero2"\nprocesses = 2\n')
    assert any("DeepSpeed wraps one model and wan2.2-t2v-a14b trains two experts" in p for p in found), found
    # accelerate's FSDP2 prepares one model per run: the two experts are refused
    found = problems(tmp_path, a14b + 'distribution = "fsdp"\nprocesses = 2\n')
    assert any("accelerate's FSDP2 shards one model per run and wan2.2-t2v-a14b trains two experts in one run; "
               'use "ddp"' in p for p in found), found
    # one expert alone is one model: FSDP and DeepSpeed shard it (here only CUDA is missing)
    for distribution in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        for one in ("dit_high_noise", "dit_low_noise"):
            found = problems(tmp_path, a14b + f'components = ["{one}"]\ndistribution = "{distribution}"\n'
                                              "processes = 2\n")
            assert not any("two experts" in p for p in found), found
            assert any("run only on CUDA GPUs" in p for p in found), found


def test_the_engines_are_looked_up_for_real():
    assert REAL_INSTALLED("accelerate") and not REAL_INSTALLED("no_such_engine_module")


def test_optimizer_and_peft_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(train_checks, "installed", lambda module: module not in {"bitsandbytes", "peft"})
    assert problems(tmp_path, TINY + 'optimizer = "adamw8bit"\n') == [
        'r.toml: [train].optimizer = "adamw8bit": needs bitsandbytes, which is not installed; pip install '
        'bitsandbytes, or use optimizer = "adamw"',
        'r.toml: [train].method = "lora": LoRA training runs on peft, which is not installed; pip install peft']
    assert problems(tmp_path, TINY + 'optimizer = "prodigy"\nmethod = "full"\n') == []


def test_an_export_dialect_the_writer_lacks(tmp_path):
    from wanflow.lora.dialects import WRITABLE

    assert problems(tmp_path, TINY + 'export_dialect = "comfyui"\n') == []
    assert problems(tmp_path, TINY + 'export_dialect = "kohya"\n') == [
        f'r.toml: [train].export_dialect = "kohya": wanflow writes LoRAs as {", ".join(WRITABLE)}; use one of them']


def test_fp8_storage_of_a_lora_base_is_checked_as_for_generation(tmp_path):
    # fp8 storage trains wherever torch can store float8 (the CPU included): no refusal of its own
    assert problems(tmp_path, TINY + "[memory]\nfp8 = true\n") == []


def test_lora_targets_that_match_no_linear_module_of_the_dit(tmp_path):
    found = problems(tmp_path, TINY + 'lora_targets = ["q", "ffn.1", "norm_q", "self_atn.o"]\n')
    assert len(found) == 3, found
    assert found[0].startswith('r.toml: [train].lora_targets: "ffn.1" matches no Linear layer of the dit DiT (')
    assert found[0].endswith('; did you mean "ffn.2"?')
    assert "(only blocks.0.cross_attn.norm_q, blocks.0.self_attn.norm_q, blocks.1.cross_attn.norm_q …, which " \
           "peft cannot wrap)" in found[1]
    assert found[2].startswith('r.toml: [train].lora_targets: "self_atn.o"')
    assert found[2].endswith('did you mean "self_attn.o"?')


def test_lora_targets_are_not_checked_for_full_fine_tuning(tmp_path):
    assert problems(tmp_path, TINY + 'method = "full"\nlora_targets = ["nothing"]\n') == []


def test_without_the_weights_the_targets_are_not_checked(tmp_path):
    text = TINY.replace("wanflow-tiny", "wan2.1-t2v-1.3b") + 'lora_targets = ["nothing"]\n'
    assert problems(tmp_path, text) == []  # planning without weights works; the run checks them


def test_each_trained_expert_present_here_is_checked(tmp_path):
    write_dit(tmp_path / "high.safetensors", {"blocks.0.self_attn.q.weight": (8, 8),
                                              "blocks.0.norm3.weight": (8,)})
    found = problems(tmp_path, A14B + 'lora_targets = ["q", "k"]\n')
    assert found == ['r.toml: [train].lora_targets: "k" matches no Linear layer of the dit_high_noise DiT '
                     '(high.safetensors); a target is a module name or its dotted ending, e.g. "q" (every '
                     'attention\'s q), "self_attn.q" or "ffn.0"']


def test_checkpoint_layouts_are_read_in_official_names():
    header = {"condition_embedder.time_proj.weight": TensorInfo("F32", (6, 2)),
              "blocks.0.attn1.to_q.weight": TensorInfo("F32", (2, 2)),
              "blocks.0.ffn.net.0.proj.weight": TensorInfo("F32", (4, 2)),
              "blocks.0.attn1.norm_q.weight": TensorInfo("F32", (2,))}
    assert modules_of(header).linear == {"time_projection.1", "blocks.0.self_attn.q", "blocks.0.ffn.0"}
    assert modules_of(header).other == {"blocks.0.self_attn.norm_q"}
    comfy = {"model.diffusion_model.blocks.0.self_attn.q.weight": TensorInfo("F32", (2, 2))}
    assert set(official_names(comfy)) == {"blocks.0.self_attn.q.weight"}


def test_a_lora_to_continue_must_fit_the_adapter(tmp_path):
    write_lora(tmp_path / "init.safetensors", {"blocks.0.self_attn.q": 4, "blocks.0.cross_attn.k": 4})
    text = TINY + 'lora_init = "init.safetensors"\n'
    assert problems(tmp_path, text + 'lora_rank = 4\nlora_targets = ["q", "k"]\n') == []
    assert problems(tmp_path, text + 'lora_targets = ["q"]\n') == [
        'r.toml: [train].lora_init = "init.safetensors": was trained at rank 4, but [train].lora_rank = 32; set '
        "lora_rank = 4",
        'r.toml: [train].lora_init = "init.safetensors": patches 1 module that [train].lora_targets does not '
        'train (e.g. blocks.0.cross_attn.k); add "k" to lora_targets, or continue another LoRA']


def test_a_lora_file_that_is_not_one(tmp_path):
    (tmp_path / "notes.safetensors").write_text("not a LoRA", encoding="utf-8")
    write_dit(tmp_path / "full.safetensors", {"blocks.0.self_attn.q.diff": (128, 128)})
    assert problems(tmp_path, TINY + 'lora_init = "full.safetensors"\npreset_lora = "notes.safetensors"\n') == [
        'r.toml: [train].lora_init = "full.safetensors": holds no low-rank LoRA pairs (lora_A/lora_down keys) to '
        "continue; name a LoRA file, or remove lora_init to start a fresh one",
        'r.toml: [train].preset_lora = "notes.safetensors": is not a safetensors file (its header cannot be read); '
        "name a LoRA .safetensors file"]


def test_problems_of_every_kind_come_together(tmp_path, monkeypatch):
    monkeypatch.setattr(train_checks, "installed", lambda module: module != "prodigyopt")
    (tmp_path / "clips" / "clip0.txt").unlink()
    found = problems(tmp_path, TINY + 'optimizer = "prodigy"\nlora_targets = ["nothing"]\n'
                     'export_dialect = "kohya"\n')
    assert [p.split(": ")[1] for p in found] == ['[train].optimizer = "prodigy"', '[train].export_dialect = "kohya"',
                                                 "[train].lora_targets", "[train].dataset"]


def test_a_derivative_family_s_bad_columns_are_refused_at_validation_with_row_and_column(tmp_path):
    (tmp_path / "meta.csv").write_text(
        "video,prompt,camera_control_direction,camera_control_speed\n"
        "clips/clip0.mp4,a clip,Sideways,0.01\nclips/clip1.mp4,another,Left,-1\n", encoding="utf-8")
    found = problems(tmp_path, 'model = "wan2.1-fun-v1.1-1.3b-control-camera"\n[train]\ndataset = "meta.csv"\n'
                     "width = 32\nheight = 32\nframes = 5\n")
    assert found == [
        "r.toml: [train].dataset: meta.csv row 1 (line 2): camera_control_direction = 'Sideways': is not a camera "
        "direction; use one of Left, Right, Up, Down, LeftUp, LeftDown, RightUp, RightDown, ZoomIn, ZoomOut",
        "r.toml: [train].dataset: meta.csv row 2 (line 3): camera_control_speed = '-1': must be a finite number > 0 "
        "(the camera's step per frame; 1/54 is the default)"]


def test_rows_of_one_bucket_with_different_inputs_cannot_share_a_batch(tmp_path):
    _video(tmp_path / "control.mp4", 9, 64, 48)
    (tmp_path / "meta.csv").write_text("video,prompt,control_video,reference_image\n"
                                       "clips/clip0.mp4,a clip,control.mp4,\nclips/clip1.mp4,another,control.mp4,ref.png\n",
                                       encoding="utf-8")
    Image.new("RGB", (32, 32)).save(tmp_path / "ref.png")
    recipe = 'model = "wan2.1-fun-v1.1-1.3b-control"\n[train]\ndataset = "meta.csv"\nwidth = 32\nheight = 32\nframes = 5\n'
    assert problems(tmp_path, recipe) == []
    found = problems(tmp_path, recipe + "batch_size = 2\n")
    assert found == ["r.toml: [train].batch_size = 2: in bucket 32x32x5 some rows give reference_image and others "
                     "leave it empty, so their conditioning differs and they cannot share a batch; give every row the "
                     "same input columns, or use batch_size = 1"]


@pytest.mark.parametrize("timestep_range", [(0.6, 1.0), (0.0, 0.3), (0.416, 0.417), (0.417, 0.418), (0.3, 0.7)])
def test_one_expert_whose_side_the_timestep_range_misses_is_refused_as_the_loop_would(tmp_path, timestep_range):
    from tests.train.test_one_expert import _trainer

    a14b = 'model = "wan2.2-t2v-a14b"\n[train]\ndataset = "clips"\n'
    for one in ("dit_high_noise", "dit_low_noise"):
        found = [p for p in problems(tmp_path, a14b + f'components = ["{one}"]\n'
                                                      f"timestep_range = {list(timestep_range)}\n")
                 if "timestep_range" in p]
        try:
            _trainer((one,), timestep_range)
            starves = False
        except ValueError:
            starves = True
        assert bool(found) == starves, (one, found)
        if found:
            assert found == [f"r.toml: [train].timestep_range = {list(timestep_range)}: holds no timestep of {one}'s "
                             f"side of the boundary (t {'≥' if one == 'dit_high_noise' else '<'} 875, with shift 5), "
                             "which this run trains alone; widen the range across the boundary, or train the other "
                             "expert"]
    # both experts: a range on one side trains that side's expert only, as before
    both = problems(tmp_path, a14b + f"timestep_range = {list(timestep_range)}\n")
    assert not any("timestep_range" in p for p in both), both
