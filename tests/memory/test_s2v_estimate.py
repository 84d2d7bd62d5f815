"""An S2V denoise forward, as the planner sizes it from the checkpoint's names and shapes, against
the live tensor bytes of tiny models' forwards with motion tokens (within 20 %, like every
forward estimate)."""

from __future__ import annotations

import pytest

from tests.models.test_s2v_model import inputs, run, seeded_state
from wanflow.memory.s2v_estimate import extra_tokens
from wanflow.models.dit_names import holds_s2v_parts
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DitConfig, from_shapes
from wanflow.models.s2v import S2VDiT
from wanflow.models.s2v_config import S2VConfig
from wanflow.models.s2v_motion import s2v_rope_table
from wanflow.steps.memory_plan import denoise_bytes

from ._ledger import LiveBytes, weight_bytes

#: Heads of 128, the release's width, which the planner assumes where no config.json says.
CASES = {"one head, 5 frames": (128, 512, 5, 32), "two heads, 5 frames": (256, 768, 5, 32),
         "two heads, 9 frames": (256, 768, 9, 32)}


@pytest.mark.parametrize("dim, ffn, frames, size", CASES.values(), ids=CASES.keys())
def test_an_s2v_forward_with_its_reference_and_motion_tokens(dim, ffn, frames, size):
    dit = DitConfig("t2v", dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=3, in_dim=16, out_dim=16, freq_dim=32,
                    text_dim=32)
    config = S2VConfig(dit, inject_layers=(0, 2), audio_dim=24)
    model = S2VDiT(config)
    model.load_state_dict(seeded_state(config), strict=True)
    s2v_rope_table.cache_clear()  # each forward makes (and keeps) its RoPE tables, whatever ran before
    with LiveBytes(model.eval()) as ledger:
        run(model, inputs(frames, size))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    predicted = denoise_bytes(from_shapes(shapes, "s2v"), shapes, (frames, size, size), 4, prepared_contexts=0)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(model), rel=0.2)


def test_the_extra_tokens_are_a_frame_and_the_packed_motion():
    """At 480p (60 x 104 latents): the reference frame's 1560 tokens, and the motion's 1560
    + 15 x 26 + 4 x 7 x 13."""
    assert extra_tokens((21, 60, 104)) == 1560 + 1560 + 15 * 26 + 4 * 7 * 13


def test_only_an_s2v_checkpoint_is_sized_so():
    dit = DitConfig("t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=1, in_dim=16, out_dim=16, freq_dim=32,
                    text_dim=32)
    assert holds_s2v_parts(S2VDiT(S2VConfig(dit, inject_layers=(0,), audio_dim=24)).state_dict())
    assert not holds_s2v_parts(WanDiT(dit).state_dict())
