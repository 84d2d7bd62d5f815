"""The Video-As-Prompt DiT: parity with DiffSynth 2.1.12 and the parts checked by hand (fp32).

DiffSynth's ``MotWanModel`` and ``model_fn_wan_video`` are the importable reference (skipped
where DiffSynth is not installed). Its weights are loaded from the released (diffusers) names by
DiffSynth's own converters, so the key table is checked too. DiffSynth modulates the head by the
reference stream's t = 1 embedding; given the main embedding it equals the authors' code, so the
default model is compared with DiffSynth's head fixed, and ``head_timestep="reference"`` with
DiffSynth as shipped. Head width 32 (not 4 mod 6: DiffSynth splits those differently).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wanflow.models import vap_keys
from wanflow.models.dit_config import DitConfig
from wanflow.models.loading import build_on_meta
from wanflow.models.rope import apply_rope, rope_table
from wanflow.models.vap import (
    VapDiT,
    VapExtras,
    joint_self_attention,
    project_qkv,
    reference_rope_table,
)
from wanflow.models.vap_config import VapConfig

from ._derivative_fixtures import diffsynth_dit, import_diffsynth

#: max |wanflow - reference| allowed (outputs are of magnitude ~1-5).
ABS_TOL = 1e-4

GRID = (3, 8, 8)  # latent frames, height, width: 3 x 4 x 4 = 48 tokens per stream


def tiny_config(head_dim: int = 32, mot_layers=(0, 4)) -> VapConfig:
    """Two heads, 6 blocks, the reference stream joining blocks 0 and 4 (of the released 0, 4, ...)."""
    dit = DitConfig("i2v", dim=2 * head_dim, ffn_dim=4 * head_dim, num_heads=2, num_layers=6, in_dim=36,
                    out_dim=16, clip=True)
    return VapConfig(dit, mot_layers)


def seeded_state(cfg: VapConfig, seed: int) -> dict[str, torch.Tensor]:
    """wanflow-named weights, every tensor randn * 0.1 from one seeded generator."""
    meta = build_on_meta(lambda: VapDiT(cfg)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in sorted(meta.items())}


def model_of(cfg: VapConfig, state, **kwargs) -> VapDiT:
    model = VapDiT(cfg, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def seeded_inputs(seed: int, batch: int = 1) -> dict:
    """Noisy latents, I2V condition, t < 500, text and CLIP of both streams, reference latents."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "x": randn(batch, 16, *GRID), "y": randn(batch, 20, *GRID),
        "t": torch.randint(0, 500, (batch,), generator=gen).float(),
        "context": randn(batch, 7, 4096), "clip_fea": randn(batch, 257, 1280),
        "vap_latents": randn(batch, 36, *GRID), "vap_context": randn(batch, 5, 4096),
        "vap_clip": randn(batch, 257, 1280),
    }


def run_ours(model: VapDiT, inp: dict, **overrides) -> torch.Tensor:
    inp = inp | overrides
    extras = VapExtras(vap_latents=inp["vap_latents"], vap_context=inp["vap_context"], vap_clip=inp["vap_clip"])
    with torch.no_grad():
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], extras=extras)


def padded(context: torch.Tensor) -> torch.Tensor:
    return F.pad(context, (0, 0, 0, 512 - context.shape[1]))


# ----------------------------------------------------------------------------- DiffSynth


class _MainTimeHead(torch.nn.Module):
    """DiffSynth's head given the main timestep's embedding whatever its model function passes."""

    def __init__(self, head: torch.nn.Module, e: torch.Tensor):
        super().__init__()
        self.head, self.e = head, e

    def forward(self, x, t):
        return self.head(x, self.e)


def diffsynth_velocity(cfg: VapConfig, state, inp: dict, fix_head: bool) -> torch.Tensor:
    """DiffSynth's model function on the released names, loaded by its own converters (strict)."""
    ds = import_diffsynth()
    from diffsynth.models.wan_video_dit import sinusoidal_embedding_1d
    from diffsynth.models.wan_video_mot import MotWanModel
    from diffsynth.utils.state_dict_converters.wan_video_dit import (
        WanVideoDiTFromDiffusers,
    )
    from diffsynth.utils.state_dict_converters.wan_video_mot import (
        WanVideoMotStateDictConverter,
    )

    released = vap_keys.to_diffusers(state)
    dit = diffsynth_dit(cfg.dit, WanVideoDiTFromDiffusers(released))
    d = cfg.dit
    vap = MotWanModel(mot_layers=cfg.mot_layers, dim=d.dim, num_heads=d.num_heads, ffn_dim=d.ffn_dim,
                      in_dim=d.in_dim, text_dim=d.text_dim, freq_dim=d.freq_dim, eps=d.eps)
    vap.load_state_dict(WanVideoMotStateDictConverter(released), strict=True)
    with torch.no_grad():
        if fix_head:
            e = dit.time_embedding(sinusoidal_embedding_1d(dit.freq_dim, inp["t"]))
            dit.head = _MainTimeHead(dit.head, e)
        return ds.model_fn(
            dit=dit, vap=vap.eval(), latents=inp["x"], timestep=inp["t"], context=padded(inp["context"]),
            clip_feature=inp["clip_fea"], y=inp["y"], vap_hidden_state=inp["vap_latents"],
            vap_clip_feature=inp["vap_clip"], context_vap=padded(inp["vap_context"]),
        )


def test_matches_diffsynth_with_its_head_given_the_main_timestep():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=21)
    inp = seeded_inputs(seed=22)
    got = run_ours(model_of(cfg, state), inp)
    want = diffsynth_velocity(cfg, state, inp, fix_head=True)
    assert got.shape == inp["x"].shape
    assert (got - want).abs().max() <= ABS_TOL
    # the reference stream takes part: another reference video gives another velocity
    other = run_ours(model_of(cfg, state), inp, vap_latents=torch.randn(1, 36, *GRID))
    assert (other - got).abs().max() > 1e-2


def test_head_timestep_reference_reproduces_diffsynth_as_shipped():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=23)
    inp = seeded_inputs(seed=24)
    shipped = diffsynth_velocity(cfg, state, inp, fix_head=False)
    got = run_ours(model_of(cfg, state, head_timestep="reference"), inp)
    assert (got - shipped).abs().max() <= ABS_TOL
    authors = run_ours(model_of(cfg, state), inp)
    assert (authors - shipped).abs().max() > 1e-2  # the two choices differ


# ----------------------------------------------------------------------------- by hand, everywhere


def test_joint_attention_is_one_softmax_over_both_streams():
    cfg = tiny_config()
    model = model_of(cfg, seeded_state(cfg, seed=25))
    main, ref = model.blocks[4].self_attn, model.mot.blocks["4"].self_attn
    gen = torch.Generator().manual_seed(26)
    x, x_ref = torch.randn(1, 48, 64, generator=gen), torch.randn(1, 48, 64, generator=gen)
    tokens = (3, 4, 4)  # GRID in (1, 2, 2) patches
    rope = reference_rope_table(tokens, 32, torch.device("cpu"), torch.float32)
    rope_main = rope_table(tokens, 32, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        got, got_ref = joint_self_attention(main, ref, x, x_ref, rope_main, rope, "sdpa")
        q, k, v = (torch.cat(pair, 1) for pair in zip(project_qkv(main, x, rope_main), project_qkv(ref, x_ref, rope)))
        weights = torch.einsum("bqhd,bkhd->bhqk", q, k).div(math.sqrt(32)).softmax(-1)  # (B, H, 96, 96)
        out = torch.einsum("bhqk,bkhd->bqhd", weights, v).flatten(2)  # (B, 96, D)
        want, want_ref = main.o(out[:, :48]), ref.o(out[:, 48:])
        alone = main.o(F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in project_qkv(main, x, rope_main)))
                       .transpose(1, 2).flatten(2))
    assert (got - want).abs().max() <= 1e-5 and (got_ref - want_ref).abs().max() <= 1e-5
    assert (got - alone).abs().max() > 1e-3  # the main stream sees the reference tokens


def _complex_angles(grid, head_dim: int, first_frame: int, split) -> torch.Tensor:
    """Angles of every token and complex channel: each axis its share of the pairs, pos * 10000^(-2i/n)."""
    f, h, w = grid
    rows = []
    for fi in range(f):
        for hi in range(h):
            for wi in range(w):
                angles = []
                for pos, pairs in zip((first_frame + fi, hi, wi), split):
                    n = 2 * pairs
                    angles += [pos * 10000.0 ** (-2 * i / n) for i in range(pairs)]
                rows.append(angles)
    return torch.tensor(rows, dtype=torch.float64)  # (L, d/2)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_reference_rope_puts_reference_frames_at_minus_f_with_the_authors_split(head_dim):
    grid = (3, 2, 2)
    authors = (head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6)  # complex pairs per axis
    angles = _complex_angles(grid, head_dim, -grid[0], authors)
    x = torch.randn(1, 12, 1, head_dim, dtype=torch.float64)
    table = reference_rope_table(grid, head_dim, torch.device("cpu"), torch.float64)
    want = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(
        torch.ones_like(angles), angles)[:, None]).flatten(-2)
    assert (apply_rope(x, table) - want).abs().max() <= 1e-12
    third = head_dim // 3  # DiffSynth's real widths: d - 2(d//3), d//3, d//3
    diffsynth = ((head_dim - 2 * third) // 2, third // 2, third // 2)
    assert (authors != diffsynth) == (head_dim % 6 == 4)  # they part only where d = 4 (mod 6)


def test_head_is_modulated_by_the_main_timestep():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=27)
    inp = seeded_inputs(seed=28)
    seen = {}

    def modulation_of(model: VapDiT) -> torch.Tensor:
        hook = model.head.register_forward_pre_hook(lambda module, args: seen.update(e=args[1]))
        run_ours(model, inp)
        hook.remove()
        return seen["e"]

    model = model_of(cfg, state)
    e = modulation_of(model)
    with torch.no_grad():
        assert torch.equal(e, model.embed_time(inp["t"])[0])
        # another embedding of the reference stream's timestep leaves the head's modulation alone
        for p in model.mot.time_embedding.parameters():
            p.add_(0.5)
    assert torch.equal(modulation_of(model), e)
    shipped = model_of(cfg, state, head_timestep="reference")
    e_shipped = modulation_of(shipped)
    with torch.no_grad():
        for p in shipped.mot.time_embedding.parameters():
            p.add_(0.5)
    assert (modulation_of(shipped) - e_shipped).abs().max() > 1e-2  # the flag's head does follow it


def test_block_ranges_and_prepared_contexts_give_the_same_velocity():
    cfg = tiny_config()
    model = model_of(cfg, seeded_state(cfg, seed=29))
    inp = seeded_inputs(seed=30, batch=2)
    own = run_ours(model, inp)  # each row its own reference video
    first = {k: inp[k][:1] for k in ("vap_latents", "vap_context", "vap_clip")}
    shared = run_ours(model, inp | {k: v.expand(2, *v.shape[1:]) for k, v in first.items()})
    extras = VapExtras(vap_latents=first["vap_latents"],
                       vap_context=model.prepare_reference(first["vap_context"], first["vap_clip"]))
    with torch.no_grad():
        stack = model.embed_inputs(inp["x"], inp["t"], model.prepare_context(inp["context"], inp["clip_fea"]),
                                   None, inp["y"], extras)
        tokens = model.run_blocks(stack, stack.tokens, 0, 3)  # a step cache runs the stack in parts
        parts = model.head_output(stack, model.run_blocks(stack, tokens, 3, 6))
    assert (parts - shared).abs().max() <= 1e-5
    assert (parts[:1] - own[:1]).abs().max() <= 1e-5
    assert (parts[1:] - own[1:]).abs().max() > 1e-3  # row 1's own reference gave another velocity


def test_bad_reference_inputs_are_refused_before_any_work():
    from wanflow.errors import ModelInputError

    cfg = tiny_config()
    model = model_of(cfg, seeded_state(cfg, seed=31))
    inp = seeded_inputs(seed=32)
    with pytest.raises(ModelInputError, match="vap_latents: .* same latent grid"):
        run_ours(model, inp, vap_latents=torch.randn(1, 36, 2, 8, 8))
    with pytest.raises(ModelInputError, match="vap_clip"):
        run_ours(model, inp, vap_clip=torch.randn(1, 514, 1280))
    with pytest.raises(ModelInputError, match="VapExtras"), torch.no_grad():
        model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"])
