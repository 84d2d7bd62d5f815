"""Video-As-Prompt's conditioners: the reference frames picked, the reference caption each guidance
pass reads, and the bad inputs refused at validation naming their key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wanflow.errors import ModelInputError, RecipeError
from wanflow.models.dit_extras import DitExtras
from wanflow.models.vap_extras import VapExtras
from wanflow.output import save_mp4
from wanflow.recipe import load_recipe
from wanflow.steps.checks import unsupported
from wanflow.steps.cond_call import ModelCall
from wanflow.steps.cond_kinds import model_call
from wanflow.steps.cond_vap import evenly, reference_clip

FAMILY = "video-as-prompt-wan2.1-14b"


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name files relative to the working folder


def _grey_video(path, levels) -> None:
    """One flat grey frame per level (flat frames survive the codec to within a level or two)."""
    frames = np.stack([np.full((16, 16, 3), v, dtype=np.uint8) for v in levels])
    save_mp4(frames, path, 8, {}, quality=0)


def test_frames_are_picked_evenly_across_the_whole_reference(tmp_path):
    assert evenly(10, 4) == [0, 3, 6, 9]
    assert evenly(81, 49) == np.floor(np.linspace(0, 80, 49)).astype(int).tolist()  # the authors' indices
    levels = [20 * i for i in range(12)]
    _grey_video(tmp_path / "ref.mp4", levels)
    clip = reference_clip(tmp_path / "ref.mp4", 5, 16, 16)  # (3, 5, 16, 16) in [-1, 1]
    seen = ((clip.mean(dim=(0, 2, 3)) + 1) * 127.5).numpy()
    assert np.abs(seen - np.array([levels[i] for i in (0, 2, 5, 8, 11)])).max() < 3, seen


def test_a_reference_shorter_than_the_clip_is_refused_when_read(tmp_path):
    _grey_video(tmp_path / "ref.mp4", [0, 50, 100])
    with pytest.raises(ModelInputError, match=r"vap_video has 3 frames, fewer than the 5 of \[video\].frames"):
        reference_clip(tmp_path / "ref.mp4", 5, 16, 16)


def _tensors() -> dict:
    return {"vap": {"latents": torch.randn(1, 36, 2, 2, 2), "clip": torch.randn(1, 257, 1280)},
            "vap_prompt": {"context": torch.randn(1, 3, 8)}, "vap_negative": {"context": torch.randn(1, 5, 8)}}


def test_each_guidance_pass_reads_its_own_reference_caption():
    found = _tensors()
    call = model_call(("vap", "vap_prompt", "vap_negative"), found)
    window = slice(0, 2)
    pos, neg = (call.dit_extras(window, 1, "cpu", p) for p in ("pos", "neg"))
    assert pos.vap_context is found["vap_prompt"]["context"] and neg.vap_context is found["vap_negative"]["context"]
    assert pos.vap_latents is neg.vap_latents is found["vap"]["latents"]  # one reference video for both
    pair = call.dit_extras(window, 2, "cpu", "pair")  # cfg_merge: [pos; neg] rows, padded to one length
    assert pair.vap_context.shape == (2, 5, 8) and pair.vap_latents.shape[0] == 2
    assert torch.equal(pair.vap_context[0, :3], found["vap_prompt"]["context"][0])
    assert pair.vap_context[0, 3:].abs().max() == 0
    assert torch.equal(pair.vap_context[1], found["vap_negative"]["context"][0])


def test_an_unconditional_pass_without_a_negative_caption_is_an_error_not_a_silent_reuse():
    found = _tensors()
    call = model_call(("vap", "vap_prompt"), found)  # cfg = 1 plans no negative caption
    assert call.dit_extras(slice(0, 2), 1, "cpu").vap_context is found["vap_prompt"]["context"]
    with pytest.raises(ModelInputError, match="negative reference caption"):
        call.dit_extras(slice(0, 2), 1, "cpu", "neg")


def test_the_reference_fields_join_another_conditioners_extras_once():
    camera = torch.randn(1, 24, 2, 16, 16)
    call = ModelCall().with_extras(camera=camera)
    joined = VapExtras.joined(call.extras, vap_latents=torch.zeros(1))
    assert joined.camera is camera and isinstance(joined.base(), DitExtras)
    with pytest.raises(ValueError, match="two conditioners set the DiT extra 'vap_latents'"):
        VapExtras.joined(joined, vap_latents=torch.ones(1))


def _recipe(tmp_path, inputs: str, model: str = FAMILY) -> object:
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "first.png")
    path = tmp_path / "r.toml"
    path.write_text(f'model = "{model}"\n[prompt]\ntext = "a cat"\n[video]\nframes = 5\n[inputs]\n{inputs}',
                    encoding="utf-8")
    return path


def _refused(path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return caught.value.problems


def test_an_empty_caption_and_a_missing_reference_are_refused_naming_their_keys(tmp_path):
    _grey_video(tmp_path / "ref.mp4", range(5))
    problems = _refused(_recipe(tmp_path, 'image = "first.png"\nvap_prompt = "  "\n'))
    assert any(p.startswith('r.toml: [inputs].vap_prompt = "  ": is empty') for p in problems), problems
    assert any(p.startswith("r.toml: [inputs].vap_video: is required by " + FAMILY) for p in problems), problems


def test_other_families_do_not_take_the_reference_inputs(tmp_path):
    _grey_video(tmp_path / "ref.mp4", range(5))
    problems = _refused(_recipe(tmp_path, 'image = "first.png"\nvap_video = "ref.mp4"\nvap_prompt = "x"\n',
                                model="wan2.1-i2v-14b-480p"))
    assert any(p.startswith('r.toml: [inputs].vap_video = "ref.mp4": wan2.1-i2v-14b-480p does not take this input')
               for p in problems), problems
    assert any("[inputs].vap_prompt" in p for p in problems), problems


def test_a_short_or_undecodable_reference_video_is_refused_at_validation(tmp_path):
    _grey_video(tmp_path / "ref.mp4", range(3))
    path = _recipe(tmp_path, 'image = "first.png"\nvap_video = "ref.mp4"\nvap_prompt = "a ball rolls"\n')
    (found,) = unsupported(load_recipe(path))
    assert found.startswith('r.toml: [inputs].vap_video = "ref.mp4": the video has 3 frames, fewer than the 5 of '
                            "[video].frames"), found
    (tmp_path / "ref.mp4").write_text("not a video")
    (found,) = unsupported(load_recipe(path))
    assert found.startswith('r.toml: [inputs].vap_video = "ref.mp4": not a readable video'), found


def test_the_family_trains_a_lora_or_fully_and_a_lora_on_the_reference_stream_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    (tmp_path / "data.csv").write_text("video,prompt\n")
    path.write_text(f'model = "{FAMILY}"\n[train]\ndataset = "data.csv"\nmethod = "full"\n', encoding="utf-8")
    assert load_recipe(path).recipe.train.method == "full"  # validates
    path.write_text(f'model = "{FAMILY}"\n[train]\ndataset = "data.csv"\nlora_targets = ["q", "mot.blocks.0.ffn.0"]\n',
                    encoding="utf-8")
    assert any(p.startswith('r.toml: [train].lora_targets = ["q", "mot.blocks.0.ffn.0"]: mot.blocks.0.ffn.0 name')
               and "reference stream" in p for p in _refused(path)), _refused(path)
