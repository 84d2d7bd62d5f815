"""The DiT variant table: a variant is told by its headers' tensor names, and what it cannot do
(streamed blocks, fp8) is refused naming the setting, before anything loads."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from wanflow.errors import ModelInputError
from wanflow.memory.dit_variants import (
    VARIANTS,
    DitVariant,
    load_variant,
    shard_unit,
    variant_of,
)

LOADED: list[tuple] = []


def recognises_marker(names) -> bool:
    return any(n.startswith("marker.") for n in names)


def load_marker(weights, dtype, device, attention_kernel, storage="compute"):
    LOADED.append((tuple(weights), dtype, device, attention_kernel, storage))
    return "model"


MARKER = DitVariant("Marker", __name__, "recognises_marker", "load_marker", names_module=__name__)


def _shard(path, *names):
    save_file({n: torch.zeros(1) for n in names}, str(path))
    return path


def test_the_first_variant_whose_headers_match_loads_and_a_plain_dit_is_none(tmp_path):
    plain = _shard(tmp_path / "plain.safetensors", "blocks.0.self_attn.q.weight")
    marked = _shard(tmp_path / "marked.safetensors", "marker.weight")
    assert variant_of([plain], (MARKER,)) is None
    assert variant_of([plain, marked], (MARKER,)) is MARKER  # any shard's names count
    assert variant_of([tmp_path / "index.json"], (MARKER,)) is None  # no shard: nothing to read
    LOADED.clear()
    assert load_variant(MARKER, [marked], torch.float32, "cpu", "sdpa", "compute", ()) == "model"
    assert LOADED == [((marked,), torch.float32, "cpu", "sdpa", "compute")]


def test_video_as_prompt_shards_are_recognised_by_their_reference_stream(tmp_path):
    vap = _shard(tmp_path / "vap.safetensors", "blocks.0.self_attn.q.weight", "mot.blocks.0.self_attn.q.weight")
    plain = _shard(tmp_path / "plain.safetensors", "blocks.0.self_attn.q.weight")
    assert variant_of([vap]).name == "Video-As-Prompt"
    assert variant_of([plain]) is None
    assert VARIANTS[0].name == "Video-As-Prompt"


@pytest.mark.parametrize(("storage", "tiers", "setting"), [("compute", ("blocks",), "[memory].limit_gb"),
                                                         ("fp8", (), "[memory].fp8")])
def test_what_a_variant_cannot_do_is_refused_before_loading(tmp_path, storage, tiers, setting):
    LOADED.clear()
    with pytest.raises(ModelInputError, match="Marker: .*" + re.escape(setting)):
        load_variant(MARKER, [tmp_path / "x.safetensors"], torch.float32, "cpu", "sdpa", storage, tiers)
    assert LOADED == []
    streams = DitVariant("Marker", __name__, "recognises_marker", "load_marker", streams=True, fp8=True)
    assert load_variant(streams, [tmp_path / "x.safetensors"], torch.float32, "cpu", "sdpa", storage, tiers) == "model"
    assert LOADED[-1][-1] == storage  # a variant that stores in fp8 is told the storage


def test_longcat_shards_are_recognised_by_their_own_names_and_load_as_one_checkpoint(tmp_path):
    from wanflow.models.longcat import LongCatDiT
    from wanflow.models.longcat_config import MARKER_KEYS, LongCatConfig, swiglu_width

    cfg = LongCatConfig(hidden_size=32, depth=2, num_heads=2, ffn_dim=swiglu_width(32), caption_channels=16,
                        adaln_tembed_dim=8, frequency_embedding_size=8)
    state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
             for i, (k, v) in enumerate(LongCatDiT(cfg).state_dict().items())}
    keys = sorted(state)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({k: state[k] for k in keys[::2]}, str(first))
    save_file({k: state[k] for k in keys[1::2]}, str(second))
    assert variant_of([first, second]).name == "LongCat-Video"  # markers spread over both shards
    assert variant_of([_shard(tmp_path / "wan.safetensors", "blocks.0.self_attn.q.weight")]) is None
    assert variant_of([_shard(tmp_path / "part.safetensors", *MARKER_KEYS[:-1])]) is None  # every marker, or none
    model = load_variant(variant_of([first, second]), [first, second], torch.float32, "cpu", "sdpa", "compute", ())
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in keys)
    from wanflow.models.fp8 import fp8_layers

    stored = load_variant(variant_of([first, second]), [first, second], torch.float32, "cpu", "sdpa", "fp8", ())
    assert len(fp8_layers(stored)) == 8 * cfg.depth  # every projection of its blocks
    placed = load_variant(variant_of([first, second]), [first, second], torch.float32, "cpu", "sdpa", "compute",
                          ("disk", "host"))
    assert [b.tier for b in placed.placement.blocks] == ["disk", "host"]
    streamed = load_variant(variant_of([first, second]), [first, second], torch.float32, "cpu", "sdpa", "fp8",
                            ("disk", "host"))  # fp8 blocks stream (memory.fp8_placed)
    assert len(fp8_layers(streamed)) == 8 * cfg.depth and streamed.blocks[0].attn.qkv.weight.is_meta
    streamed.placement.remove()  # the weights it streamed come back: the whole fp8 load's, to the bit
    want = stored.state_dict()
    assert all(torch.equal(t.view(torch.uint8), want[k].view(torch.uint8)) for k, t in streamed.state_dict().items())
    with pytest.raises(ValueError, match="expected 2 tiers"):
        load_variant(variant_of([first, second]), [first, second], torch.float32, "cpu", "sdpa", "fp8", ("host",))


def test_telling_a_variant_never_imports_torch(tmp_path):
    """The memory plan asks the table on every run, a fully cached one included, which must not
    import torch: each variant's recogniser reads names only."""
    import subprocess
    import sys

    vap = _shard(tmp_path / "vap.safetensors", "blocks.0.self_attn.q.weight", "mot.blocks.0.self_attn.q.weight")
    code = ("import sys\nfrom wanflow.memory.dit_variants import variant_of\n"
            f"print(variant_of([{str(vap)!r}]).name, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Video-As-Prompt", "False"]


def test_fsdp_finds_the_block_class_each_dit_s_files_name(tmp_path):
    """The block class name read off a DiT's files is the class accelerate's TRANSFORMER_BASED_WRAP
    finds in the loaded model (by name), and every one of its blocks is one: LongCat's own Block and
    the Wan DiT's are other classes of the same name; S2V's blocks subclass the Wan Block under
    another name."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    from tests.e2e._layout_longcat import CONFIG, longcat_state
    from tests.e2e._layout_s2v import s2v_state, tiny_s2v_config
    from tests.models._dit_fixtures import random_state, tiny_config
    from wanflow.models import dit, longcat, s2v

    states = {"longcat": longcat_state(7), "wan": random_state(tiny_config()), "s2v": s2v_state(tiny_s2v_config(), 7)}
    for name, state in states.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"{name}.safetensors"))
    for name, model, block in (("longcat", longcat.LongCatDiT(CONFIG), longcat.Block),
                               ("wan", dit.WanDiT(tiny_config()), dit.Block),
                               ("s2v", s2v.S2VDiT(tiny_s2v_config()), s2v.S2VBlock)):  # a Block of another name
        files = [tmp_path / f"{name}.safetensors"]
        found = get_module_class_from_name(model, shard_unit(files))
        assert found is block and all(type(b) is block for b in model.blocks)


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_animate_shards_load_into_block_tiers_and_in_fp8(tmp_path, layout):
    """Placed blocks (the face blocks and encoders on the device) give the whole model's output to
    the bit, from either layout's shards; fp8 stores the main blocks' projections; fp8 with
    streamed blocks gives the whole fp8 model's output to the bit."""
    from tests.models._animate_fixtures import diffusers_layout, inputs, seeded_state, tiny_config, write_checkpoint
    from wanflow.models.animate import AnimateExtras
    from wanflow.models.fp8 import fp8_layers

    cfg = tiny_config(num_layers=5)
    state = seeded_state(cfg)
    write_checkpoint(tmp_path, diffusers_layout(cfg, state) if layout == "diffusers" else state, shards=2)
    files = sorted(tmp_path.glob("*.safetensors"))
    variant = variant_of(files)
    assert variant.name == "Wan2.2-Animate"
    tiers = ("disk", "host", "device", "disk", "host")
    whole = load_variant(variant, files, torch.float32, "cpu", "sdpa", "compute", ())
    placed = load_variant(variant, files, torch.float32, "cpu", "sdpa", "compute", tiers)
    assert [b.tier for b in placed.placement.blocks] == list(tiers)
    assert placed.blocks[0].self_attn.q.weight.is_meta and not placed.face_adapter.fuser_blocks[0].linear2.weight.is_meta
    x = inputs(cfg, frames=3)
    with torch.no_grad():
        outs = [m(x["x"], x["t"], x["context"], clip_fea=x["clip_fea"], y=x["y"],
                  extras=AnimateExtras(pose=x["pose"], face=x["face"])) for m in (whole, placed)]
    assert torch.equal(*outs)
    stored = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", "fp8", ())
    assert len(fp8_layers(stored)) == 12 * cfg.dit.num_layers  # the main blocks' projections only
    multiplied = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", "fp8-matmul", ())
    with torch.no_grad():
        bf16 = [m(x["x"].bfloat16(), x["t"], x["context"].bfloat16(), clip_fea=x["clip_fea"].bfloat16(),
                  y=x["y"].bfloat16(), extras=AnimateExtras(pose=x["pose"].bfloat16(), face=x["face"].bfloat16()))
                for m in (stored, multiplied)]
    assert not torch.equal(*bf16) and (bf16[1] - bf16[0]).norm() / bf16[0].norm() < 0.1  # fp8 activations too
    for storage, want in zip(("fp8", "fp8-matmul"), bf16):  # fp8 blocks streamed: the whole fp8 model's output
        streamed = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", storage, tiers)
        assert streamed.blocks[0].self_attn.q.weight.is_meta
        with torch.no_grad():
            out = streamed(x["x"].bfloat16(), x["t"], x["context"].bfloat16(), clip_fea=x["clip_fea"].bfloat16(),
                           y=x["y"].bfloat16(), extras=AnimateExtras(pose=x["pose"].bfloat16(),
                                                                     face=x["face"].bfloat16()))
        assert torch.equal(out, want), storage


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_s2v_shards_load_into_block_tiers_and_in_fp8(tmp_path, prefix):
    """Placed blocks (the audio injectors and encoders on the device) give the whole model's output
    to the bit, from the release's shards or ComfyUI's prefixed names, with the heads of the
    config.json beside them; fp8 stores the blocks' projections only."""
    from tests.models.test_s2v_loading import released_layout
    from tests.models.test_s2v_model import TINY, inputs, run, tiny
    from wanflow.models.fp8 import fp8_layers

    folder = released_layout(tmp_path / "s2v", {prefix + k: v for k, v in tiny(seed=3).state_dict().items()})
    files = sorted(folder.glob("*.safetensors"))
    variant = variant_of(files)
    assert variant.name == "Wan2.2 S2V"
    tiers = ("disk", "device", "host")
    whole = load_variant(variant, files, torch.float32, "cpu", "sdpa", "compute", ())
    placed = load_variant(variant, files, torch.float32, "cpu", "sdpa", "compute", tiers)
    assert placed.s2v_config == TINY and [b.tier for b in placed.placement.blocks] == list(tiers)
    assert placed.blocks[0].ffn[0].weight.is_meta and not placed.audio_injector.injector[0].q.weight.is_meta
    data = inputs()
    assert torch.equal(run(placed, data), run(whole, data))
    stored = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", "fp8", ())
    assert len(fp8_layers(stored)) == 10 * TINY.dit.num_layers
    multiplied = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", "fp8-matmul", ())
    half = {k: v.bfloat16() for k, v in data.items()}
    bf16 = [run(m, half) for m in (stored, multiplied)]
    assert not torch.equal(*bf16) and (bf16[1] - bf16[0]).norm() / bf16[0].norm() < 0.1  # fp8 activations too
    for storage, want in zip(("fp8", "fp8-matmul"), bf16):  # fp8 blocks streamed: the whole fp8 model's output
        streamed = load_variant(variant, files, torch.bfloat16, "cpu", "sdpa", storage, tiers)
        assert streamed.blocks[0].ffn[0].weight.is_meta
        assert torch.equal(run(streamed, half), want), storage
