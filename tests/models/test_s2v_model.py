"""The S2V DiT on tiny seeded weights: token layout, RoPE positions, the two-part modulation, the
audio tokens' causality, batching and the refusals; hand-checked where a number can be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.models.dit import Block
from wanflow.models.dit_config import DitConfig
from wanflow.models.loading import build_on_meta
from wanflow.models.rope import rope_table
from wanflow.models.s2v import (
    PreparedAudio,
    S2VBlock,
    S2VDiT,
    S2VExtras,
    SegmentTimes,
    silent_audio,
)
from wanflow.models.s2v_audio import AdaptiveNorm, latent_frames
from wanflow.models.s2v_config import S2VConfig
from wanflow.models.s2v_motion import motion_positions, s2v_rope_table

#: Tiny sizes: 2 heads of 32 (DiffSynth's RoPE split needs head_dim // 3 even), 3 blocks, audio
#: injectors after blocks 0 and 2 (block 1 has none), wav2vec2 width 24 with the release's 25 layers.
TINY_DIT = DitConfig("t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=3, in_dim=16, out_dim=16,
                     freq_dim=32, text_dim=32)
TINY = S2VConfig(TINY_DIT, inject_layers=(0, 2), audio_dim=24)


def seeded_state(config: S2VConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor randn * 0.1 from one generator (zero inits would hide bugs)."""
    meta = build_on_meta(lambda: S2VDiT(config)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in sorted(meta.items())}


def tiny(seed: int = 0) -> S2VDiT:
    model = S2VDiT(TINY)
    model.load_state_dict(seeded_state(TINY, seed), strict=True)
    return model.eval()


def inputs(frames: int = 3, size: int = 16, batch: int = 1, seed: int = 5) -> dict[str, torch.Tensor]:
    """x, context, audio buckets (4 per latent frame), reference, pose and 19 motion latents."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return {"x": randn(batch, 16, frames, size, size), "context": randn(batch, 9, 32),
                "audio": randn(batch, 25, 24, 4 * frames), "ref": randn(batch, 16, 1, size, size),
                "pose": randn(batch, 16, frames, size, size), "motion": randn(batch, 16, 19, size, size)}


def run(model: S2VDiT, data: dict, t: float = 700.0, **extras) -> torch.Tensor:
    fields = {"audio": data["audio"], "ref_latent": data["ref"], "pose": data["pose"], "motion": data["motion"]} | extras
    t = torch.full((data["x"].shape[0],), t)
    with torch.no_grad():
        return model(data["x"], t, data["context"], extras=S2VExtras(**fields))


# ----------------------------------------------------------------------------- hand-checked layout


def test_motion_tokens_sit_at_negative_frames_over_the_full_grid():
    pos = motion_positions(rows=4, cols=4, latent_height=8, latent_width=8)
    assert pos.shape == (16 + 4 + 4, 3)  # (1,2,2): 4x4; (2,4,4): 2x2; (4,8,8): 4 frames of 1x1
    assert np.all(pos[:16, 0] == -1) and sorted(set(pos[:16, 1])) == [0, 1, 2, 3]
    assert pos[16:20].tolist() == [[-3, 0, 0], [-3, 0, 3], [-3, 3, 0], [-3, 3, 3]]
    assert pos[20:].tolist() == [[-19, 0, 0], [-14, 0, 0], [-9, 0, 0], [-4, 0, 0]]
    wide = motion_positions(rows=28, cols=52, latent_height=56, latent_width=104)  # 448 x 832 px
    assert sorted(set(wide[1456 + 364:, 1])) == [0, 4, 9, 13, 18, 22, 27]  # linspace(0, 27, 7), truncated


def test_rope_puts_the_video_on_its_grid_the_reference_at_frame_30_and_motion_mirrored():
    head_dim, dev = TINY_DIT.head_dim, torch.device("cpu")
    cos, sin = s2v_rope_table(2, 8, 8, True, head_dim, dev, torch.float64)
    video, frame = 2 * 16, 16
    grid_cos, grid_sin = rope_table((31, 4, 4), head_dim, dev, torch.float64)
    assert torch.equal(cos[:video], grid_cos[:video]) and torch.equal(sin[:video], grid_sin[:video])
    assert torch.equal(cos[video:video + frame], grid_cos[30 * frame:]) and torch.equal(
        sin[video:video + frame], grid_sin[30 * frame:])
    newest = slice(video + frame, video + 2 * frame)  # frame -1: cos even, sin odd in the angle
    frame_dims = head_dim - 4 * (head_dim // 6)
    assert torch.equal(cos[newest], grid_cos[frame:2 * frame])
    assert torch.equal(sin[newest][..., :frame_dims], -grid_sin[frame:2 * frame][..., :frame_dims])
    assert torch.equal(sin[newest][..., frame_dims:], grid_sin[frame:2 * frame][..., frame_dims:])


def test_audio_frame_counts_follow_the_two_strided_causal_convs():
    assert latent_frames(80 + 73) == 19 + 20  # the release's 80-frame clip: 20 latent frames
    assert [latent_frames(4 * f + 73) - 19 for f in (1, 2, 5)] == [1, 2, 5]
    assert latent_frames(4 * 5 + 3 + 73) - 19 == 5 and latent_frames(4 * 6 + 73) - 19 == 6


@torch.no_grad()
def test_each_latent_frame_hears_video_frames_4j_minus_5_to_4j_plus_3_only():
    """Three kernel-3 causal convs, two of stride 2: latent frame j sees the 9 audio frames
    4j - 5 .. 4j + 3 (its own four and five before), nothing later."""
    model, data = tiny(), inputs(frames=5)
    before = model.prepare_audio(data["audio"])
    louder = data["audio"].clone()
    louder[..., 9] += 3.0  # heard by latent frames 2 (3..11) and 3 (7..15)
    after = model.prepare_audio(louder)
    changed = [bool((a - b).abs().max() > 1e-4) for a, b in zip(after.local[0], before.local[0])]
    assert changed == [False, False, True, True, False]
    assert [bool((a - b).abs().max() > 1e-4) for a, b in zip(after.glob[0], before.glob[0])] == changed
    assert before.local.shape == (1, 5, 5, 64)
    assert torch.equal(before.local[0, :, 4], model.casual_audio_encoder.encoder.padding_tokens[0, 0].expand(5, -1))


def test_the_adaptive_norm_shifts_first_and_normalises_with_eps_1e_5():
    norm = AdaptiveNorm(4)
    with torch.no_grad():
        norm.linear.weight.zero_()
        norm.linear.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5]))  # [shift, scale]
        x = torch.tensor([[[0.0, 0.002, 0.004, 0.006]]])  # variance 5e-6: eps 1e-5 weighs in
        out = norm(x, torch.zeros(1, 4))
    normed = (x - 0.003) / torch.sqrt(torch.tensor(5e-6 + 1e-5))
    torch.testing.assert_close(out, normed * 1.5 + torch.tensor([1.0, 2.0, 3.0, 4.0]), rtol=0, atol=1e-5)


def test_the_two_part_modulation_equals_per_token_modulation():
    torch.manual_seed(0)
    block, plain = S2VBlock(TINY_DIT), Block(TINY_DIT)
    plain.load_state_dict(block.state_dict())
    x, context = torch.randn(2, 20, 64), torch.randn(2, 7, 64)
    e0 = torch.randn(2, 2, 6, 64)
    rope = rope_table((5, 2, 2), TINY_DIT.head_dim, x.device, x.dtype)
    per_token = torch.cat([e0[:, :1].expand(-1, 12, -1, -1), e0[:, 1:].expand(-1, 8, -1, -1)], dim=1)
    with torch.no_grad():
        got = block(x, SegmentTimes(e0, 12), context, rope, image_len=0, kernel="sdpa")
        want = plain(x, per_token, context, rope, image_len=0, kernel="sdpa")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got[:, 12:] - block(x, SegmentTimes(e0[:, [0, 0]], 12), context, rope, 0, "sdpa")[:, 12:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the forward


def test_prepared_audio_gives_the_same_forward():
    model, data = tiny(), inputs()
    with torch.no_grad():
        prepared = model.prepare_audio(data["audio"])
    assert torch.equal(run(model, data), run(model, data, audio=prepared))


def test_a_guidance_batch_equals_its_rows_run_alone():
    model, data = tiny(), inputs(batch=2)
    data["audio"][1] = silent_audio(data["audio"][1])
    both = run(model, data)
    for row in range(2):
        alone = run(model, {k: v[row:row + 1] for k, v in data.items()})
        torch.testing.assert_close(both[row:row + 1], alone, rtol=0, atol=2e-6)
    assert (both[0] - both[1]).abs().max() > 1e-3


def test_every_input_changes_the_output():
    model, data = tiny(), inputs()
    base = run(model, data)
    for change in ({"pose": None}, {"motion": None}, {"motion": data["motion"][:, :, -5:]},
                   {"audio": silent_audio(data["audio"])}, {"ref_latent": data["ref"] * -1}):
        assert (run(model, data, **change) - base).abs().max() > 1e-3, change
    assert torch.equal(run(model, data, motion=data["motion"][:, :, -5:]),
                       run(model, data, motion=torch.cat([torch.zeros(1, 16, 14, 16, 16),
                                                          data["motion"][:, :, -5:]], dim=2)))


def test_the_audio_encoder_stays_fp32_under_bf16():
    data = inputs()
    full = run(tiny(), data)
    model = tiny().set_compute_dtype(torch.bfloat16)
    assert (run(model, data) - full).abs().max() < 0.05 * full.abs().max()  # bf16 rounding, not a broken path
    assert {p.dtype for n, p in model.named_parameters() if n.startswith("casual_audio_encoder.")} == {torch.float32}
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32


@pytest.mark.parametrize("change, words", [
    ({"audio": None}, "S2VExtras(audio=..., ref_latent=...)"),
    ({"audio": "drop-last"}, "covers 2 latent frames"),
    ({"audio": torch.zeros(1, 24, 24, 12)}, "expected per-frame buckets (B, 25, 24, frames)"),
    ({"ref_latent": torch.zeros(1, 16, 2, 16, 16)}, "ref_latent: (1, 16, 2, 16, 16)"),
    ({"pose": torch.zeros(1, 16, 2, 16, 16)}, "pose: (1, 16, 2, 16, 16)"),
    ({"motion": torch.zeros(1, 16, 20, 16, 16)}, "1..19"),
    ({"vace_context": torch.zeros(1, 96, 3, 16, 16)}, "reads no y, VACE"),
])
def test_bad_inputs_are_refused_with_what_is_expected(change, words):
    model, data = tiny(), inputs()
    if isinstance(change.get("audio"), str):  # four buckets short: one latent frame too few
        change = {"audio": data["audio"][..., :-4]}
    with pytest.raises(ModelInputError) as err:
        run(model, data, **change)
    assert words in str(err.value)


def test_motion_needs_latents_in_multiples_of_8_and_windows_are_refused():
    model, data = tiny(), inputs(size=12)
    with pytest.raises(ModelInputError, match="multiples of 64 pixels"):
        run(model, data)
    assert run(model, data, motion=None).shape == (1, 16, 3, 12, 12)  # no motion tokens: any even size
    with pytest.raises(ModelInputError, match="cannot be run apart"):
        S2VExtras(audio=data["audio"]).frames(slice(0, 2))
    with pytest.raises(ModelInputError, match="one timestep per sample"):
        tiny()(data["x"], torch.zeros(1, 108), data["context"], extras=S2VExtras(audio=data["audio"], ref_latent=data["ref"]))


def test_prepared_audio_of_another_clip_is_refused():
    model, data = tiny(), inputs()
    with torch.no_grad():
        prepared = model.prepare_audio(data["audio"][..., :8])
    with pytest.raises(ModelInputError, match="prepare_audio of this clip"):
        run(model, data, audio=prepared)
    assert isinstance(prepared, PreparedAudio) and prepared.local.shape[1] == 2
