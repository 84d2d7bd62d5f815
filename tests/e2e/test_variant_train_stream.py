"""Wan2.2-Animate's and Wan2.2-S2V's LoRAs trained with their frozen base streamed
(``[memory].policy`` stream or disk), through the real pipeline: the resident run's bytes and its
key. Their side modules (Animate's face blocks and encoders, S2V's audio injectors and encoders)
stay resident, as in generation's placement (``memory.streamed.placed_variant``)."""

from __future__ import annotations

import pytest

from tests.e2e import _train_stream
from tests.e2e import test_animate_training as animate
from tests.e2e import test_train_s2v as s2v
from tests.e2e._train import write_metadata
from tests.e2e._train_stream import assert_streams_bit_for_bit

animate_root, aenv, data = animate.animate_root, animate.aenv, animate.data  # the Animate training tests' fixtures
s2v_root, senv, media = s2v.s2v_root, s2v.senv, s2v.media  # the S2V training tests'
placed = _train_stream.placed  # the spy on where each trained DiT is placed


@pytest.mark.parametrize("fp8", [False, True], ids=["compute", "fp8"])
def test_a_streamed_animate_lora_is_the_resident_one_bit_for_bit(aenv, data, tmp_path, monkeypatch, placed, fp8):
    meta = write_metadata(data, [animate.ROW])
    recipe = animate.train_recipe(tmp_path, meta, steps=2, learning_rate=0.05)
    assert_streams_bit_for_bit(recipe, aenv, tmp_path, monkeypatch, placed, "AnimateDiT", f"memory.fp8={str(fp8).lower()}")


def test_the_plan_streams_animate_s_blocks_and_keeps_its_face_modules_resident(animate_root):
    """The streamed blocks are the DiT's ``blocks.N``: the face blocks and encoders (resident, as
    placed) stay in the resident bytes."""
    import math

    import attrs

    from tests.e2e._layout_animate import REPO
    from wanflow.memory.planner import Budgets
    from wanflow.memory.sizes import component_size, read_headers
    from wanflow.memory.train_stream_estimate import IN_FLIGHT
    from wanflow.models.dit_config import from_shapes
    from wanflow.steps.memory_plan import TrainJob, dit_keeps_fp32, dit_shapes
    from wanflow.steps.train_stream_plan import planned_train_step, streamable

    dit = [f for f in sorted((animate_root / REPO).rglob("*.safetensors"))
           if any(n.startswith("face_adapter.") for n in read_headers([f]))]
    config = from_shapes(dit_shapes(dit), str(dit[0]))
    settings = type("Train", (), {"method": "lora", "preset_lora": None, "gradient_checkpointing": True,
                                  "distribution": "none"})()
    assert streamable(settings, {"runtime.compile": "none"}, {"dit": dit}, ())
    train = TrainJob(config=config, dit_files={"dit": dit}, grid=(3, 2, 2), bucket="16x16x9", itemsize=4,
                     device_run=True, accumulation=1, targets=("q", "k", "v", "o"), rank=4, method="lora", batch=1,
                     checkpointing=True, offload=False, streamable=True)
    headers = read_headers(dit)
    size = component_size("dit", headers, 4, keeps_fp32=dit_keeps_fp32, blocks=True)
    blocks = size.block_bytes
    face = sum(4 * math.prod(t.shape) for n, t in headers.items() if n.startswith(("face_adapter.", "face_encoder.")))
    assert len(blocks) == config.num_layers and face and sum(blocks) + face <= size.weight_bytes
    resident, found = train.peak(), train.peak(streamed=config.num_layers)
    assert found.device_bytes == resident.device_bytes - sum(blocks) + IN_FLIGHT * max(blocks)
    assert found.host_bytes == resident.host_bytes + sum(blocks)
    cpu = attrs.evolve(train, device_run=False)
    assert planned_train_step(None, cpu, Budgets(None, 1 << 40), "disk").tiers == (("dit", ("disk",) * 5),)


@pytest.mark.parametrize("fp8", [False, True], ids=["compute", "fp8"])
def test_a_streamed_s2v_lora_is_the_resident_one_bit_for_bit(senv, media, tmp_path, monkeypatch, placed, fp8):
    rows = [{"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"]),
             "s2v_pose_video": "clips/pose.mp4"}]
    recipe = s2v.train_recipe(tmp_path, write_metadata(tmp_path / "data", rows), steps=2, learning_rate=0.05)
    assert_streams_bit_for_bit(recipe, senv, tmp_path, monkeypatch, placed, "S2VDiT", f"memory.fp8={str(fp8).lower()}")
