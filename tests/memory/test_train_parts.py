"""Full fine-tuning of a DiT's own parts alone (Wan2.2-Animate's, Video-As-Prompt's reference
stream): the planner's count of what trains, read off the checkpoint's names, against what the
train step unfreezes; and the estimate against the live tensor bytes of tiny training steps."""

from __future__ import annotations

import pytest
import torch

from tests.memory._ledger import seeded
from tests.memory.test_train_estimate import RANK, SHAPE, TARGETS, TrainingBytes
from tests.models._dit_fixtures import tiny_config
from wanflow.memory import train_estimate as te
from wanflow.memory.motion_estimate import face_crops, motion_encoder_bytes
from wanflow.memory.stream_estimate import joined_blocks
from wanflow.models import full_training, vap_keys
from wanflow.models.animate import AnimateDiT, AnimateExtras
from wanflow.models.animate_config import AnimateConfig, MotionEncoderConfig
from wanflow.models.animate_motion import MotionEncoder
from wanflow.models.dit import WanDiT
from wanflow.models.rope import rope_table
from wanflow.models.vap import VapDiT
from wanflow.models.vap_config import VapConfig
from wanflow.models.vap_extras import VapExtras
from wanflow.steps.memory_plan import full_trained
from wanflow.train.adapters import adapted_modules, inject_lora, unfreeze
from wanflow.train.batch import Batch
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

GRID = (5, 16, 16)


def vap_model(layers: int = 4, mot_layers: tuple[int, ...] = (0, 2)) -> VapDiT:
    cfg = VapConfig(tiny_config("i2v", **SHAPE, num_layers=layers), mot_layers)
    model = VapDiT(cfg)
    return seeded(model)


def animate_model(layers: int = 5) -> AnimateDiT:
    motion = MotionEncoderConfig(size=16, widths=(8, 16, 16), style_dim=32, motion_dim=6, direction_dim=32)
    model = AnimateDiT(AnimateConfig(tiny_config("i2v", **SHAPE, num_layers=layers), motion, face_hidden_dim=24))
    return seeded(model)


def names_and_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.state_dict().items()}


@pytest.mark.parametrize("make", [vap_model, animate_model], ids=["video-as-prompt", "animate"])
def test_the_planner_counts_what_the_train_step_unfreezes(make):
    model = make()
    unfreeze(model)
    trains = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trains < sum(p.numel() for p in model.parameters())
    counted, parts = full_trained(names_and_shapes(model), model.cfg.num_layers)
    assert counted.params == trains
    assert parts is not None and parts.trained_blocks == 0


def test_released_reference_stream_names_count_as_the_stream():
    """Video-As-Prompt's released files name the stream ``blocks.N.attn1_mot_ref.…``."""
    model = vap_model()
    released = {k: tuple(v.shape) for k, v in vap_keys.to_diffusers(model.state_dict()).items()}
    ours, ours_parts = full_trained(names_and_shapes(model), 4)
    theirs, their_parts = full_trained(released, 4)
    assert theirs == ours and their_parts == ours_parts == te.Parts(0, 2)
    assert theirs.block_params == sum(p.numel() for p in model.mot.blocks["0"].parameters())


def test_a_dit_without_own_parts_trains_every_weight():
    model = WanDiT(tiny_config("i2v", **SHAPE))
    counted, parts = full_trained(names_and_shapes(model), model.cfg.num_layers)
    assert parts is None and counted.params == sum(p.numel() for p in model.parameters())
    assert full_training.trained_prefixes(names_and_shapes(model)) == ()


# ----------------------------------------------------------------------------- activations


def _trainer(model: torch.nn.Module, micro: Batch, checkpointing: bool) -> Trainer:
    model.requires_grad_(False)
    unfreeze(model)
    model.gradient_checkpointing = checkpointing
    model.train()
    settings = Settings(task="sft", steps=2, checkpoint_every=100)
    return Trainer([Expert("dit", model)], settings, batch_order([""], (0,), 1, 0), lambda _: micro)


def _inputs(cfg, gen: torch.Generator) -> dict:
    return {"context": torch.randn(1, 7, cfg.text_dim, generator=gen),
            "x0": torch.randn(1, cfg.out_dim, *GRID, generator=gen),
            "y": torch.randn(1, cfg.in_dim - cfg.out_dim, *GRID, generator=gen),
            "clip": torch.randn(1, cfg.image_len, 1280, generator=gen)}


def vap_batch(model: VapDiT) -> Batch:
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    extras = VapExtras(vap_latents=torch.randn(1, cfg.in_dim, *GRID, generator=gen),
                       vap_context=torch.randn(1, 7, cfg.text_dim, generator=gen),
                       vap_clip=torch.randn(1, cfg.image_len, 1280, generator=gen))
    return Batch(**_inputs(cfg, gen), extras=extras)


def animate_batch(model: AnimateDiT) -> Batch:
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    size = model.animate_config.motion.size
    extras = AnimateExtras(pose=torch.randn(1, cfg.out_dim, GRID[0] - 1, *GRID[1:], generator=gen),
                           face=torch.rand(1, 3, 4 * GRID[0] - 7, size, size, generator=gen) * 2 - 1)
    return Batch(**_inputs(cfg, gen), extras=extras)


def measured_and_predicted(model: torch.nn.Module, micro: Batch, checkpointing: bool) -> tuple[int, int]:
    """Bytes a CPU training step adds to the frozen weights: measured over two optimizer steps,
    and predicted from what the planner reads off the model's names."""
    shapes = names_and_shapes(model)
    train = _trainer(model, micro, checkpointing)
    rope_table.cache_clear()
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    trained, parts = full_trained(shapes, model.cfg.num_layers, GRID[0])
    setup = te.TrainSetup("full", 1, GRID, 4, checkpointing, parts=parts)
    peak = te.train_peak(model.cfg, setup, [trained], device_run=False)
    return ledger.peak, peak.state + peak.activations


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "every block held"])
def test_the_reference_stream_s_training_step(checkpointing):
    model = vap_model()
    measured, predicted = measured_and_predicted(model, vap_batch(model), checkpointing)
    assert predicted == pytest.approx(measured, rel=0.2)


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "every block held"])
def test_the_animate_parts_training_step(checkpointing):
    model = animate_model()
    measured, predicted = measured_and_predicted(model, animate_batch(model), checkpointing)
    assert predicted == pytest.approx(measured, rel=0.2)


MOTION = {"16 px, the tiny family's": MotionEncoderConfig(size=16, widths=(8, 16, 16), style_dim=32, motion_dim=6,
                                                          direction_dim=32),
          "64 px": MotionEncoderConfig(size=64, widths=(16, 16, 32, 32, 32), style_dim=32, motion_dim=6,
                                       direction_dim=32),
          "128 px, the released widths": MotionEncoderConfig(size=128)}


@pytest.mark.parametrize("motion", MOTION.values(), ids=MOTION.keys())
def test_what_the_motion_encoder_keeps_per_face_crop(motion):
    """Growth from 2 to 4 crops of the motion encoder's forward and backward with its weights trained."""
    encoder = MotionEncoder(motion)
    measured = []
    for crops in (2, 4):
        faces = torch.rand(crops, 3, motion.size, motion.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with TrainingBytes(encoder) as ledger:
            encoder(faces).square().sum().backward()
        measured.append(ledger.peak)
    predicted = motion_encoder_bytes(motion, 4, 4) - motion_encoder_bytes(motion, 2, 4)
    assert predicted == pytest.approx(measured[1] - measured[0], rel=0.1)


def test_a_clip_s_face_crops_are_its_frames_less_the_reference_s():
    assert face_crops(21) == 77  # 81 frames: the release's clip of 77 crops and the reference image
    assert face_crops(GRID[0]) == animate_batch(animate_model()).extras.face.shape[2]


def test_what_a_face_block_adds():
    """Five more checkpointed blocks and the face block after the first of them: its weights'
    state and the tensors it keeps for backward, never recomputed."""
    (m5, p5), (m10, p10) = (measured_and_predicted(model, animate_batch(model), True)
                            for model in (animate_model(5), animate_model(10)))
    assert p10 - p5 == pytest.approx(m10 - m5, rel=0.1)


# ----------------------------------------------------------------------------- a LoRA beside a frozen stream

LORA = {"checkpointed": (True, torch.float32), "every block held": (False, torch.float32),
        "bf16, checkpointed": (True, torch.bfloat16)}


@pytest.mark.parametrize("checkpointing, dtype", LORA.values(), ids=LORA.keys())
def test_a_lora_beside_the_frozen_reference_stream(checkpointing, dtype):
    """The LoRA trains the main stream; the joint attention hands the reference stream the
    gradient, so its frozen blocks keep what backward needs, and each joined block's checkpoint
    keeps the stream's tokens beside the video's."""
    model = vap_model()
    micro = vap_batch(model)
    names = vap_keys.to_diffusers(model.state_dict())  # as the planner reads the release
    model.set_compute_dtype(dtype).requires_grad_(False)
    linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    adapters, params, block = te.lora_adapters(linears, adapted_modules(model, TARGETS), RANK)
    inject_lora(model, TARGETS, RANK, float(RANK), 0)
    model.gradient_checkpointing = checkpointing
    train = Trainer([Expert("dit", model.train())], Settings(task="sft", steps=2, checkpoint_every=100),
                    batch_order([""], (0,), 1, 0), lambda _: micro)
    rope_table.cache_clear()
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    setup = te.TrainSetup("lora", 1, GRID, dtype.itemsize, checkpointing, adapters=adapters,
                          frozen_stream_blocks=joined_blocks(names))
    peak = te.train_peak(model.cfg, setup, [te.Trained(0, params, block, model.cfg.num_layers)], device_run=False)
    assert peak.state + peak.activations == pytest.approx(ledger.peak + params * 4, rel=0.2)  # factors made before
