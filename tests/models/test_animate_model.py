"""The Animate DiT's structure and contract: the released key set and sizes, its config checks,
the inputs it refuses before any work, its extras, and its fp32 direction basis."""

from __future__ import annotations

import attrs
import pytest
import torch

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models import animate_config
from wanflow.models.animate import (
    DIRECTION_KEY,
    AnimateDiT,
    AnimateExtras,
    PreparedFace,
    face_frames,
)
from wanflow.models.animate_config import WAN22_ANIMATE_14B, lia_widths
from wanflow.models.dit import WanDiT
from wanflow.models.dit_cache import cached_forward
from wanflow.models.dit_config import WAN21_I2V_14B_480P
from wanflow.models.dit_extras import DitExtras
from wanflow.models.loading import build_on_meta
from wanflow.sampling.step_cache import FirstBlockRule, StepCache, TeaCacheRule

from ._animate_fixtures import (
    inputs,
    model_of,
    official_modules,
    seeded_state,
    tiny_config,
)


def released_shapes() -> dict[str, tuple[int, ...]]:
    model = build_on_meta(lambda: AnimateDiT(WAN22_ANIMATE_14B))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_released_sizes():
    shapes = released_shapes()
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert len(shapes) == 1441 and round(total / 1e9, 3) == 17.275  # the released file's counts
    assert shapes["motion_encoder.enc.net_app.convs.8.weight"] == (512, 512, 4, 4)
    assert shapes["motion_encoder.enc.net_app.convs.7.skip.0.kernel"] == (4, 4)
    assert shapes["face_adapter.fuser_blocks.7.linear1_kv.weight"] == (10240, 5120)
    assert shapes["face_encoder.conv1_local.conv.weight"] == (4096, 512, 3)
    assert lia_widths(512) == (32, 64, 128, 256, 512, 512, 512, 512)
    assert animate_config.from_shapes(shapes, "released") == WAN22_ANIMATE_14B


def test_released_keys_are_the_i2v_dit_plus_the_official_modules():
    """The released file holds the Wan2.1 I2V-14B DiT's keys and the official adapter's."""
    official = official_modules()
    with torch.device("meta"):
        adapter = official.WanAnimateAdapter()  # hard-coded at the released sizes
    dit = build_on_meta(lambda: WanDiT(WAN21_I2V_14B_480P)).state_dict()
    theirs = {k: tuple(v.shape) for k, v in {**dit, **adapter.state_dict()}.items()}
    assert len(adapter.state_dict()) == 1441 - len(dit)
    assert theirs == released_shapes()


def test_every_size_is_read_off_the_shapes():
    """Any width and head count (not only the released 128-wide heads), any encoder size."""
    cfg = tiny_config(size=32, widths=(4, 8, 16, 16))
    cfg = attrs.evolve(cfg, dit=attrs.evolve(cfg.dit, dim=64, num_heads=4, ffn_dim=96, text_dim=48),
                       motion=attrs.evolve(cfg.motion, style_dim=24, motion_dim=5, direction_dim=40, fc_layers=3),
                       face_hidden_dim=12, face_heads=3)
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: AnimateDiT(cfg)).state_dict().items()}
    assert animate_config.from_shapes(shapes, "tiny") == cfg


def test_config_refuses_impossible_sizes():
    cfg = tiny_config()
    with pytest.raises(ModelLoadError, match="num_layers = 7 must be a multiple of 5"):
        animate_config.check(attrs.evolve(cfg, dit=attrs.evolve(cfg.dit, num_layers=7)), "x.safetensors")
    with pytest.raises(ModelLoadError, match="direction_dim = 4 must be at least motion_dim = 6"):
        animate_config.check(attrs.evolve(cfg, motion=attrs.evolve(cfg.motion, direction_dim=4)), "x.safetensors")
    with pytest.raises(ModelLoadError, match="an I2V DiT taking 36 channels"):
        animate_config.check(attrs.evolve(cfg, dit=attrs.evolve(cfg.dit, in_dim=16, model_type="t2v", clip=False)),
                             "x.safetensors")


def test_face_frames_follow_the_strided_convs():
    assert [face_frames(n) for n in (77, 5, 9, 13, 1)] == [21, 3, 4, 5, 2]


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    return model_of(cfg, seeded_state(cfg, seed=1)), inputs(cfg, seed=2)


def call(model, inp, **extras):
    fields = {"pose": inp["pose"], "face": inp["face"]} | extras
    with torch.no_grad():
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], extras=AnimateExtras(**fields))


@pytest.mark.parametrize(("change", "message"), [
    ({"pose": None}, r"needs AnimateExtras\(pose=\.\.\., face=\.\.\.\)"),
    ({"face": None}, r"needs AnimateExtras"),
    ({"pose": torch.zeros(1, 16, 3, 8, 8)}, r"pose: shape \(1, 16, 3, 8, 8\); expected \(1, 16, 2, 8, 8\)"),
    ({"pose": torch.zeros(1, 16, 2, 8, 6)}, r"pose: shape .*every latent frame of x but the first"),
    ({"face": torch.zeros(1, 3, 9, 16, 16)}, r"face: 9 face frames .* cover 4 latent frames; x has 3 .* 5 face crops"),
    ({"face": torch.zeros(1, 3, 5, 32, 32)}, r"face: \(1, 3, 5, 32, 32\); expected RGB face crops \(B, 3, T, 16, 16\)"),
    ({"face": PreparedFace(torch.zeros(1, 4, 5, 128))}, r"face: prepared tokens of shape \(1, 4, 5, 128\)"),
])
def test_bad_inputs_are_refused(tiny, change, message):
    model, inp = tiny
    with pytest.raises(ModelInputError, match=message):
        call(model, inp, **change)


def test_plain_extras_are_refused(tiny):
    model, inp = tiny
    with pytest.raises(ModelInputError, match="needs AnimateExtras"):
        model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], extras=DitExtras())


def test_pose_joins_the_tokens_of_the_frames_after_the_reference(tiny):
    model, inp = tiny
    def tokens(pose):
        with torch.no_grad():
            return model.embed_inputs(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"],
                                      AnimateExtras(pose=pose, face=inp["face"])).tokens
    added = tokens(inp["pose"]) - tokens(torch.zeros_like(inp["pose"]))  # (1, 3 * 4 * 4, D)
    with torch.no_grad():
        pose = model.pose_patch_embedding(inp["pose"]) - model.pose_patch_embedding(torch.zeros_like(inp["pose"]))
    assert torch.equal(added[:, :16], torch.zeros_like(added[:, :16]))  # the reference frame: no pose
    assert torch.allclose(added[:, 16:], pose.flatten(2).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("rule", [TeaCacheRule((1.0, 0.0), 10.0, "e"), FirstBlockRule(10.0)])
def test_a_step_cache_runs_the_face_blocks_with_the_block_stack(tiny, rule):
    """Never skipping: bit-identical to the plain forward; skipping: the cached residual (face
    blocks included) stands in for the stack."""
    model, inp = tiny
    extras = AnimateExtras(pose=inp["pose"], face=model.prepare_face(inp["face"]))
    args = (inp["x"],)
    rest = {"clip_fea": inp["clip_fea"], "y": inp["y"], "extras": extras}
    ts = [torch.tensor([900.0]), torch.tensor([880.0])]
    with torch.no_grad():
        never = StepCache(TeaCacheRule((1.0, 0.0), 0.0), [900.0, 880.0, 0.0])
        for t in ts:
            assert torch.equal(cached_forward(model, *args, t, inp["context"], cache=never, branch="c", **rest),
                               model(*args, t, inp["context"], **rest))
        cache = StepCache(rule, [900.0, 880.0, 0.0])
        cached_forward(model, *args, ts[0], inp["context"], cache=cache, branch="c", **rest)
        skipped = cached_forward(model, *args, ts[1], inp["context"], cache=cache, branch="c", **rest)
    assert cache.computed_steps("c") == (0,)
    assert not torch.allclose(skipped, model(*args, ts[1], inp["context"], **rest), atol=1e-3)


def test_extras_expand_move_and_refuse_windows(tiny):
    _model, inp = tiny
    extras = AnimateExtras(pose=inp["pose"], face=PreparedFace(torch.zeros(1, 3, 5, 128)), modulation=None)
    grown = extras.expand(2)
    assert grown.pose.shape[0] == 2 and grown.face.tokens.shape[0] == 2 and isinstance(grown, AnimateExtras)
    assert extras.to("cpu").face.tokens.shape == (1, 3, 5, 128)
    assert extras.frames(slice(0, 3)) is extras and not extras.empty and AnimateExtras().empty
    with pytest.raises(ModelInputError, match="cover a whole clip"):
        extras.frames(slice(1, 3))
    with pytest.raises(ModelInputError, match="cover a whole clip"):
        extras.frames(slice(0, 2))


def test_batch_one_pose_and_face_serve_every_row(tiny):
    model, inp = tiny
    two = {k: torch.cat([v, v]) for k, v in inp.items() if k not in ("pose", "face")}
    with torch.no_grad():
        out = model(two["x"], two["t"], two["context"], two["clip_fea"], two["y"],
                    extras=AnimateExtras(pose=inp["pose"], face=inp["face"]))
    assert torch.allclose(out[0], call(model, inp)[0], atol=1e-5) and torch.allclose(out[0], out[1])


def test_compute_dtype_keeps_the_direction_basis_in_fp32():
    cfg = tiny_config()
    state = seeded_state(cfg)
    model = model_of(cfg, state).set_compute_dtype(torch.bfloat16)
    assert model.motion_encoder.dec.direction.weight.dtype == torch.float32
    assert torch.equal(model.motion_encoder.dec.direction.weight, state[DIRECTION_KEY])
    assert model.face_adapter.fuser_blocks[0].linear1_q.weight.dtype == torch.bfloat16
