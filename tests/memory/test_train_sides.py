"""The train step of Wan2.2-S2V (LoRA and full fine-tuning) and of a LoRA of Wan2.2-Animate: the
estimate, with the blocks beside the stack that the planner reads off the checkpoint's names
(S2V's audio injectors, Animate's face blocks), against the live tensor bytes of tiny CPU train
steps (within 20 %), and those blocks as the planner finds them in the released layouts."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from tests.e2e._layout_s2v import tiny_s2v_config
from tests.memory._ledger import growth as measured_growth
from tests.memory._ledger import seeded
from tests.memory.test_train_estimate import RANK, SHAPE, TARGETS, TrainingBytes
from tests.memory.test_train_parts import animate_model, names_and_shapes
from tests.models._dit_fixtures import tiny_config
from wanflow.memory import train_estimate as te
from wanflow.memory.train_sides import side_blocks, untrained_prefixes
from wanflow.models.animate import AnimateExtras
from wanflow.models.loading import build_on_meta
from wanflow.models.rope import rope_table
from wanflow.models.s2v import S2VDiT, S2VExtras
from wanflow.models.s2v_config import S2VConfig
from wanflow.models.s2v_motion import s2v_rope_table
from wanflow.steps.memory_plan import adapted_weights, full_trained, linear_weights
from wanflow.train.adapters import adapted_modules, inject_lora, unfreeze
from wanflow.train.batch import Batch
from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.order import batch_order

GRID = (5, 32, 32)  # frame 0: S2V's reference, Animate's image frame


def s2v_model(layers: int = 4, inject: tuple[int, ...] = (0, 1, 2, 3)) -> S2VDiT:
    """A tiny S2V DiT, an audio injector after each block in ``inject``."""
    return seeded(S2VDiT(S2VConfig(tiny_config("t2v", **SHAPE, num_layers=layers), inject_layers=inject,
                                    audio_dim=24)))


def s2v_batch(model: S2VDiT) -> Batch:
    """One clip as ``train_s2v.sample_tensors`` hands it: the reference's latent as x0's frame 0,
    the audio buckets of the frames after it, the pose latents, no motion context."""
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    frames = GRID[0] - 1
    extras = S2VExtras(audio=torch.randn(1, 25, 24, 4 * frames, generator=gen),
                       ref_latent=torch.randn(1, 16, 1, *GRID[1:], generator=gen),
                       pose=torch.randn(1, 16, frames, *GRID[1:], generator=gen))
    return Batch(torch.randn(1, 7, cfg.text_dim, generator=gen), torch.randn(1, 16, *GRID, generator=gen),
                 extras=extras)


def animate_batch(model) -> Batch:
    """One clip as a LoRA's Animate sample hands it: the face tokens made once by the frozen
    encoders (``PreparedFace``), the pose of the frames after the first."""
    cfg, gen = model.cfg, torch.Generator().manual_seed(1)
    size = model.animate_config.motion.size
    with torch.no_grad():
        face = model.prepare_face(torch.rand(1, 3, 4 * GRID[0] - 7, size, size, generator=gen) * 2 - 1)
    extras = AnimateExtras(pose=torch.randn(1, cfg.out_dim, GRID[0] - 1, *GRID[1:], generator=gen), face=face)
    return Batch(torch.randn(1, 7, cfg.text_dim, generator=gen), torch.randn(1, cfg.out_dim, *GRID, generator=gen),
                 torch.randn(1, cfg.in_dim - cfg.out_dim, *GRID, generator=gen),
                 torch.randn(1, cfg.image_len, 1280, generator=gen), extras=extras)


@attrs.frozen
class Case:
    family: str  # "s2v" or "animate"
    method: str = "lora"
    dtype: torch.dtype = torch.float32
    checkpointing: bool = True
    layers: int = 4
    inject: tuple[int, ...] = (0, 1, 2, 3)  # S2V's injected blocks


def measured_and_predicted(case: Case) -> tuple[int, int]:
    """Bytes a CPU train step adds to the frozen weights (two optimizer steps, the LoRA's factors,
    made before, added), and the estimate of what the planner reads off the checkpoint's names."""
    model = s2v_model(case.layers, case.inject) if case.family == "s2v" else animate_model(case.layers)
    micro = (s2v_batch if case.family == "s2v" else animate_batch)(model)
    shapes = names_and_shapes(model)
    model.requires_grad_(False)
    if case.method == "lora":
        model.set_compute_dtype(case.dtype)
        assert sorted(adapted_weights(shapes, TARGETS)) == sorted(adapted_modules(model, TARGETS))
        adapters, params, block = te.lora_adapters(linear_weights(shapes), adapted_weights(shapes, TARGETS), RANK)
        trained = te.Trained(0, params, block, case.layers)
        inject_lora(model, TARGETS, RANK, float(RANK), 0)
        before = params * 4
    else:
        adapters, before = None, 0
        trained, _ = full_trained(shapes, case.layers, GRID[0])
        unfreeze(model)
    model.gradient_checkpointing = case.checkpointing
    train = Trainer([Expert("dit", model.train())], Settings(task="sft", steps=2, checkpoint_every=100),
                    batch_order([""], (0,), 1, 0), lambda _: micro)
    rope_table.cache_clear()
    s2v_rope_table.cache_clear()  # each step makes (and keeps) its own RoPE tables
    with TrainingBytes(model) as ledger:
        train.run(lambda done, state: None)
    adapted = adapted_weights(shapes, TARGETS) if case.method == "lora" else ()
    sides = side_blocks(shapes, linear_weights(shapes), adapted, RANK, case.method)
    setup = te.TrainSetup(case.method, 1, GRID, case.dtype.itemsize, case.checkpointing, adapters=adapters,
                          side_blocks=sides)
    peak = te.train_peak(model.cfg, setup, [trained], device_run=False)
    return ledger.peak + before, peak.state + peak.activations


#: Checkpointed steps, where blocks beside the stack keep most beside the blocks' inputs (every block
#: held, each block's own tensors outweigh them: the growth tests below count them there).
CASES = {
    "s2v lora, an injector after every block": Case("s2v"),
    "s2v lora bf16": Case("s2v", dtype=torch.bfloat16),
    "s2v full (no frame packer trained)": Case("s2v", "full"),
    "animate lora, six face blocks": Case("animate", layers=30),
    "animate lora bf16, four face blocks": Case("animate", dtype=torch.bfloat16, layers=20),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_train_step_with_its_side_blocks(case):
    measured, predicted = measured_and_predicted(case)
    assert predicted == pytest.approx(measured, rel=0.2)


def growth(small: Case, large: Case) -> tuple[int, int]:
    return measured_growth(measured_and_predicted, small, large)


def test_what_an_animate_face_block_keeps_under_a_lora():
    """Five more checkpointed blocks and a frozen face block after the first of them, which the
    LoRA's gradient passes through: the tensors it keeps for backward, never recomputed."""
    measured, predicted = growth(Case("animate", layers=5), Case("animate", layers=10))
    assert predicted == pytest.approx(measured, rel=0.1)


INJECTORS = {"lora": ("lora", torch.float32), "lora bf16": ("lora", torch.bfloat16), "full": ("full", torch.float32)}


@pytest.mark.parametrize("method, dtype", INJECTORS.values(), ids=INJECTORS.keys())
def test_what_s2v_audio_injectors_keep(method, dtype):
    """Two more injectors, every block held (checkpointed, the last block's injector is freed
    before that block is recomputed): each keeps its tensors over the video tokens, frozen
    under a LoRA (with, at bf16, its adapters' fp32 inputs) or trained."""
    measured, predicted = growth(Case("s2v", method, dtype, checkpointing=False, layers=3, inject=(0,)),
                                 Case("s2v", method, dtype, checkpointing=False, layers=3, inject=(0, 1, 2)))
    assert predicted == pytest.approx(measured, rel=0.15)


# ----------------------------------------------------------------------------- read off the names


def test_the_planner_finds_s2v_s_injectors_and_their_adapters():
    cfg = tiny_s2v_config()
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: S2VDiT(cfg)).state_dict().items()}
    linears = linear_weights(shapes)
    (lora,) = side_blocks(shapes, linears, adapted_weights(shapes, TARGETS), RANK, "lora")
    dim = cfg.dit.dim
    assert (lora.kind, lora.count) == ("audio", len(cfg.inject_layers))
    assert lora.adapters == te.Adapters(RANK, 2 * dim, 2 * dim, 0, 2)  # q and o read the video; k, v the speech
    (frozen,) = side_blocks(shapes, linears, adapted_weights(shapes, ("self_attn.q",)), RANK, "lora")
    assert frozen == te.SideBlocks("audio", len(cfg.inject_layers))
    assert side_blocks(shapes, linears, (), RANK, "full") == (te.SideBlocks("audio", len(cfg.inject_layers)),)


def test_the_planner_finds_animate_s_face_blocks_under_a_lora_only():
    shapes = names_and_shapes(animate_model(10))
    linears = linear_weights(shapes)
    assert side_blocks(shapes, linears, adapted_weights(shapes, TARGETS), RANK, "lora") == (te.SideBlocks("face", 2),)
    assert side_blocks(shapes, linears, (), RANK, "full") == ()  # its trained parts (``Parts``) count them


def test_s2v_full_fine_tuning_trains_no_frame_packer():
    """A training sample has no motion context: the frame packer's weights get no gradient."""
    model = s2v_model()
    shapes = names_and_shapes(model)
    unfreeze(model)
    model.train()
    train = Trainer([Expert("dit", model)], Settings(task="sft", steps=1, checkpoint_every=100),
                    batch_order([""], (0,), 1, 0), lambda _: s2v_batch(model))
    train.run(lambda done, state: None)
    with_state = sum(p.numel() for p in train.optimizer.state)  # AdamW's moments: the parameters it stepped
    assert untrained_prefixes(shapes) == ("frame_packer.",)
    assert full_trained(shapes, model.cfg.num_layers)[0].params == with_state
    assert untrained_prefixes(names_and_shapes(animate_model())) == ()


def test_a_training_job_s_plan_reads_the_injectors_off_the_released_files(tmp_path):
    """``TrainJob.peak``, as a training plan calls it on the release's shards: the injectors
    (with a LoRA's adapters) are in its activations, and full fine-tuning's state leaves out the
    frame packer."""
    from tests.e2e._layout_s2v import write_dit
    from wanflow.memory.sizes import dit_shapes
    from wanflow.models.dit_config import from_shapes
    from wanflow.steps.memory_plan import TrainJob

    write_dit(tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    shapes = dit_shapes(files)
    config = from_shapes(shapes, str(files[0]))
    grid = (3, 8, 8)
    job = TrainJob(config=config, dit_files={"dit": files}, grid=grid, bucket="64x64x9", itemsize=4, device_run=False,
                   accumulation=1, targets=TARGETS, rank=RANK, method="lora", batch=1, checkpointing=True,
                   offload=False)
    adapters, params, block = te.lora_adapters(linear_weights(shapes), adapted_weights(shapes, TARGETS), RANK)
    plain = te.TrainSetup("lora", 1, grid, 4, True, adapters=adapters)
    count = len(tiny_s2v_config().inject_layers)
    sides = (te.SideBlocks("audio", count, te.Adapters(RANK, 2 * config.dim, 2 * config.dim, 0, 2)),)
    with_sides = attrs.evolve(plain, side_blocks=sides)
    lora = [te.Trained(0, params, block, config.num_layers)]
    found = job.peak()
    assert found.activations == te.train_peak(config, with_sides, lora, device_run=False).activations
    without = te.train_peak(config, plain, lora, device_run=False).activations
    assert found.activations - without == te.side_block_bytes(config, with_sides) > 0
    full = job.peak(method="full")
    packer = sum(math.prod(s) for k, s in shapes.items() if k.startswith("frame_packer."))
    every = sum(math.prod(s) for s in shapes.values())
    trained, _ = full_trained(shapes, config.num_layers, grid[0])
    assert packer > 0 and trained.params == every - packer
    full_setup = te.TrainSetup("full", 1, grid, 4, True, side_blocks=(te.SideBlocks("audio", count),))
    assert full.state == te.train_peak(config, full_setup, [trained], device_run=False).state
