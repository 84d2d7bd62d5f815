"""Wan2.2-Animate training recipes and datasets are checked at validation, before any model loads.

Each problem names its key (recipe) or its row and column (dataset): [inputs] a training sample
takes from its columns, a recipe-wide mode, LoRA targets on the DiT's
Animate parts, validation videos; a missing column, a replacement column without its pair, DiffSynth's column names,
driving videos shorter than the clip's frames less 4, a pose video of another size than the clip.
"""

from __future__ import annotations

import numpy as np
import pytest

import wanflow
from wanflow.cli import main

FAMILY = "wan2.2-animate-14b"


def _video(path, frames: int, size=(16, 16)) -> None:
    from wanflow.output import save_mp4

    save_mp4(np.random.default_rng(frames).integers(0, 256, (frames, size[1], size[0], 3), dtype=np.uint8),
             path, 8, {}, quality=0)


@pytest.fixture()
def folder(tmp_path):
    _video(tmp_path / "clip.mp4", 9)
    _video(tmp_path / "pose.mp4", 5)
    _video(tmp_path / "short.mp4", 4)
    _video(tmp_path / "wide.mp4", 5, (32, 16))
    _video(tmp_path / "face.mp4", 5, (24, 24))
    from wanflow.output import save_mp4

    save_mp4(np.full((5, 16, 16, 3), 128, np.uint8), tmp_path / "grey.mp4", 8, {}, quality=0)
    mask = np.zeros((5, 16, 16, 3), np.uint8)
    mask[:, :, :6] = 255
    save_mp4(mask, tmp_path / "mask.mp4", 8, {}, quality=0)
    return tmp_path


def _recipe(folder, rows: list[str], train: str = "", inputs: str = "", frames: int = 9) -> list[str]:
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    text = (f'model = "{FAMILY}"\n[train]\ndataset = "metadata.csv"\nwidth = 16\nheight = 16\nframes = {frames}\n{train}'
            + (f"[inputs]\n{inputs}" if inputs else ""))
    (folder / "t.toml").write_text(text)
    return wanflow.validate(folder / "t.toml")


HEAD = "video,prompt,animate_pose_video,animate_face_video"
GOOD = "clip.mp4,a dancer,pose.mp4,face.mp4"


def _has(problems, *parts) -> bool:
    return any(all(p in line for p in parts) for line in problems)


def test_a_good_dataset_validates(folder):
    assert _recipe(folder, [HEAD, GOOD]) == []


def test_settings_training_would_not_read_are_refused_naming_the_key(folder):
    problems = _recipe(folder, [HEAD, GOOD], train='method = "full"\nbatch_size = 2\nlora_targets = ["q", "linear2"]\n'
                       'validation_prompts = ["a dancer"]\n',
                       inputs='pose_video = "pose.mp4"\nanimate_mode = "replacement"\noverlap_frames = 5\n')
    assert _has(problems, "t.toml: [inputs].pose_video = ", "each sample takes its own from the dataset's "
                "animate_pose_video column"), problems
    assert _has(problems, '[inputs].animate_mode = "replacement"', "each sample's mode is its row's"), problems
    assert _has(problems, "[inputs].overlap_frames = 5", "a sample is one clip"), problems
    assert not _has(problems, '[train].method'), problems  # full fine-tuning trains the Animate parts
    assert not _has(problems, "[train].batch_size = 2", "Animate"), problems  # batches are built
    assert _has(problems, "[train].validation_prompts", "validation_samples"), problems
    assert not _has(problems, "is required by"), problems  # its validation videos are refused, not short of inputs
    problems = _recipe(folder, [HEAD, GOOD], train='lora_targets = ["q", "linear2", "out_proj"]\n')
    assert _has(problems, "[train].lora_targets", "linear2, out_proj match layers of the DiT's Animate parts"), problems
    assert main(["validate", str(folder / "t.toml")]) == 2


def test_fp8_storage_trains_a_lora_and_fp8_matmuls_are_refused_as_for_wan(folder):
    """A LoRA's frozen base may be stored in fp8 (as a generation stores the blocks); fp8 matmuls
    (no backward) and full fine-tuning over fp8 storage are refused as for any DiT's training."""
    assert _recipe(folder, [HEAD, GOOD], train="[memory]\nfp8 = true\n") == []
    problems = _recipe(folder, [HEAD, GOOD], train="[memory]\nfp8 = true\n[runtime]\nfp8_matmul = true\n")
    assert len(problems) == 1 and _has(problems, "t.toml: [runtime].fp8_matmul = true: fp8 matmuls have no "
                                       "backward"), problems
    problems = _recipe(folder, [HEAD, GOOD], train='method = "full"\n[memory]\nfp8 = true\n')
    assert len(problems) == 1 and _has(problems, "t.toml: [memory].fp8 = true: stores frozen weights in fp8"), problems


def test_batches_of_animate_samples_validate(folder):
    assert _recipe(folder, [HEAD, GOOD, "clip.mp4,another dancer,pose.mp4,face.mp4"], train="batch_size = 2\n") == []


def test_bad_rows_are_refused_naming_row_and_column(folder, capsys):
    problems = _recipe(folder, ["video,prompt,animate_pose_video", "clip.mp4,a dancer,pose.mp4"])
    assert _has(problems, "row 1", "requires the 'face_video' input; set the animate_face_video column"), problems
    problems = _recipe(folder, [HEAD, "clip.mp4,a dancer,short.mp4,face.mp4", "clip.mp4,b,wide.mp4,face.mp4"])
    assert _has(problems, "row 1 (line 2): animate_pose_video = 'short.mp4': has 4 frames, fewer than the 5",
                "the clip's less 4"), problems
    assert _has(problems, "row 2 (line 3): animate_pose_video = 'wide.mp4': is 32x16, but the clip is 16x16"), problems
    problems = _recipe(folder, [HEAD + ",animate_inpaint_video,animate_mask_video",
                                GOOD + ",pose.mp4,mask.mp4", GOOD + ",pose.mp4,", GOOD + ",wide.mp4,short.mp4"])
    assert not _has(problems, "row 1 "), problems  # replacement rows train
    assert _has(problems, "row 2 (line 3): animate_inpaint_video", "replacement needs both animate_inpaint_video "
                "and animate_mask_video"), problems
    assert _has(problems, "row 3 (line 4): animate_inpaint_video = 'wide.mp4': is 32x16, but the clip is 16x16"), problems
    assert _has(problems, "row 3 (line 4): animate_mask_video = 'short.mp4': has 4 frames, fewer than the 5"), problems
    problems = _recipe(folder, [HEAD + ",animate_inpaint_video,animate_mask_video", GOOD + ",pose.mp4,mask.mp4",
                                GOOD + ",pose.mp4,grey.mp4"])
    assert len(problems) == 1 and _has(problems, "row 2: animate_mask_video = ", "grey.mp4", "not a black-and-white "
                                       "mask: 100% of its pixels are grey"), problems
    problems = _recipe(folder, ["video,prompt,pose_video,animate_face_video", "clip.mp4,a,pose.mp4,face.mp4"])
    assert _has(problems, "column 'pose_video'", "animate_pose_video (DiffSynth's name)"), problems
    problems = _recipe(folder, [HEAD, GOOD], frames=1)
    assert _has(problems, "animate_pose_video", "train on clips of at least 5 frames"), problems
