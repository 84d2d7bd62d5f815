"""The quickstart family's component trainers: they learn, they are deterministic, and what they
write is what wanflow loads and runs (official keys, the wanflow-tiny folder layout)."""

from __future__ import annotations

import fnmatch

import attrs
import numpy as np
import pytest
import torch

from scripts.quickstart import build_family, init_dit, regrid_dit
from scripts.quickstart import train_text_encoder as te
from scripts.quickstart import train_vae as tv
from scripts.quickstart.files import save_weights
from scripts.shapes.vocabulary import HELD_OUT, training_combos
from wanflow.families.tiny import family
from wanflow.memory import pool
from wanflow.models.dit_loader import load_dit
from wanflow.models.text_encoder import TextEncoder
from wanflow.models.vae.loader import load_vae

TINY_VAE = {"dim": 4}  # the smallest width the architecture allows (RMSNorm over >1 channel)
TINY_DIT = init_dit.quickstart_config(dim=64, layers=2, heads=1, ffn=64)


def _batch(frames: int = 5):
    video, mask = tv.training_batch(3, 0, 1, frames)
    return video[..., :32, :32], mask[..., :32, :32]


def _vae(seed: int = 0):
    torch.manual_seed(seed)
    return tv.VideoVAE(tv.tiny_config(**TINY_VAE))


# ----------------------------------------------------------------------------- VAE


def test_backward_runs_through_wanflows_own_vae_and_its_gradient_is_right():
    """Training runs the VAE wanflow ships, no swapped layers: its norm must let autograd through."""
    vae, (video, _) = _vae(), _batch()
    vae.double()
    weight = vae.encoder.downsamples[0].residual[2].weight  # a conv behind the first norm

    def loss() -> torch.Tensor:
        return vae.decoder(vae.conv2(vae.conv1(vae.encoder(video.double()))[:, :16])).pow(2).mean()

    loss().backward()
    direction = torch.randn_like(weight)
    with torch.no_grad():
        weight += 1e-6 * direction
        up = loss()
        weight -= 2e-6 * direction
        down = loss()
        weight += 1e-6 * direction
    assert float((weight.grad * direction).sum()) == pytest.approx(float((up - down) / 2e-6), rel=1e-4)


def _clip_share(vae: tv.VideoVAE, video: torch.Tensor) -> float:
    """How much an untrained VAE's reconstructions differ between clips, relative to their spread."""
    with torch.no_grad():
        out = vae.decoder(vae.conv2(vae.conv1(vae.encoder(video))[:, :16]))
    return float(out.std(dim=0).mean() / out.std())


def test_the_training_init_keeps_reconstructions_dependent_on_the_clip():
    """torch's default conv init leaves the 8-channel RMSNorm VAE's output mostly input-independent
    offsets, from which training collapses to the mean grey; ``initialise`` keeps the clip's share."""
    video = tv.training_batch(3, 0, 4, 1)[0][..., :32, :32]
    default, trained_init = [], []
    for seed in range(3):
        default.append(_clip_share(_vae(seed), video))
        trained_init.append(_clip_share(tv.initialise(_vae(seed)), video))
    assert min(trained_init) > 0.1 and np.mean(trained_init) > 3 * np.mean(default), (trained_init, default)
    convs = [m for m in tv.initialise(_vae()).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert not any(m.bias.any() for m in convs)
    big = [m.weight for m in convs if m.weight[0].numel() >= 100]  # enough entries to estimate a std
    he = [float(w.std() * (w[0].numel() / 2) ** 0.5) for w in big]  # 1 for He-normal weights
    assert len(big) > 20 and 0.8 < min(he) and max(he) < 1.2, he


def test_training_starts_on_lone_frames_then_windows():
    settings = attrs.evolve(tv.VAETraining(), image_steps=3, image_batch=5, batch=2, window=9)
    assert [tv.shape_of_step(s, settings) for s in (0, 2, 3, 10)] == [(5, 1), (5, 1), (2, 9), (2, 9)]


def test_the_latent_penalty_measures_the_latents_wanflow_encodes():
    """The regularised latents are VideoVAE.encode's (chunked, normalised), not the raw mu."""
    vae, (video, mask) = _vae(), _batch()
    with torch.no_grad():
        terms = tv.losses(vae, video, mask, tv.VAETraining(), torch.Generator().manual_seed(0))
    z = vae.encode(video)
    mean, var = z.mean(dim=(0, 2, 3, 4)), z.var(dim=(0, 2, 3, 4))
    expected = mean.pow(2).mean() + (var - 1).pow(2).mean()
    assert float(terms["stats"]) == pytest.approx(float(expected), rel=1e-4)


def test_the_vae_losses_fall_when_fitting_a_batch():
    vae, (video, mask) = _vae(), _batch()
    settings, gen = attrs.evolve(tv.VAETraining(), noise_max=0.0, stats_weight=1.0), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = None
    for _ in range(12):
        terms = tv.losses(vae, video, mask, settings, gen)
        first = first or {k: float(v.detach()) for k, v in terms.items()}
        opt.zero_grad()
        tv.total(terms, settings).backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in tv.losses(vae, video, mask, settings, gen).items()}
    assert last["recon"] < 0.8 * first["recon"] and last["stats"] < 0.6 * first["stats"], (first, last)


def test_training_batches_show_training_combinations_with_the_shape_masked():
    video, mask = tv.training_batch(0, 5, 3, 9)
    assert video.shape == (3, 3, 9, 64, 64) and -1 <= video.min() and video.max() <= 1
    share = mask.mean(dim=(1, 2, 3, 4))
    assert ((share > 0.01) & (share < 0.2)).all(), share  # the shape: a few % of every clip
    assert torch.equal(tv.training_batch(0, 5, 3, 9)[0], video)
    assert not torch.equal(tv.training_batch(0, 6, 3, 9)[0], video)


def test_vae_training_is_deterministic_and_its_file_loads_in_wanflow(tmp_path):
    settings = attrs.evolve(tv.VAETraining(), steps=2, image_steps=1, image_batch=1, batch=1, window=5)
    a, _ = tv.train(0, settings, **TINY_VAE, log_every=0)
    b, _ = tv.train(0, settings, **TINY_VAE, log_every=0)
    c, _ = tv.train(1, settings, **TINY_VAE, log_every=0)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.encoder.conv1.weight, c.encoder.conv1.weight)
    path = save_weights(a.state_dict(), tmp_path / "vae" / "Wan2.1_VAE.safetensors")
    loaded = load_vae(path, "wan2.1")
    assert loaded.config.dim == 4
    frames = tv.render(tv.sample_spec(np.random.default_rng(0), "red", "ball", "left"))[:5, :32, :32]
    reference = a.to(torch.bfloat16).float()  # the weights as the file holds them
    with torch.no_grad():
        want = reference.decode(reference.encode(tv.to_video(frames[None])))
        got = loaded.decode(loaded.encode(tv.to_video(frames[None])))
    assert torch.equal(got, want)



def test_an_interrupted_vae_training_resumes_to_the_same_weights(tmp_path):
    settings = attrs.evolve(tv.VAETraining(), steps=4, image_steps=2, image_batch=1, batch=1, window=5)
    whole, history = tv.train(0, settings, **TINY_VAE, log_every=0)

    class Stop(Exception):
        pass

    def stop_after_two(step, vae):
        if step == 2:
            raise Stop

    checkpoint = tmp_path / "vae.ckpt"
    with pytest.raises(Stop):
        tv.train(0, settings, **TINY_VAE, log_every=1, on_log=stop_after_two, checkpoint=checkpoint)
    resumed, resumed_history = tv.train(0, settings, **TINY_VAE, log_every=1, checkpoint=checkpoint)
    assert resumed_history == history
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    with pytest.raises(SystemExit, match="other settings"):
        tv.train(0, attrs.evolve(settings, lr=1e-3), **TINY_VAE, log_every=1, checkpoint=checkpoint)

# ----------------------------------------------------------------------------- text encoder


def test_training_captions_cover_the_vocabulary_but_no_held_out_combination():
    train = te.training_captions()
    assert not {combo for _, combo in train} & set(HELD_OUT)
    words = {w for text, _ in train for w in text.split()}
    held = {w for text, _ in te.labelled(HELD_OUT) for w in text.split()}
    assert held <= words and len(train) == sum(len(te.captions_of(c)) for c in training_combos())


def test_the_trained_features_are_wanflows_own_encoding(tmp_path):
    """Padding to the batch's longest caption gives wanflow's 512-padded features on real tokens."""
    model = te.initial_model(0).eval()
    path = save_weights(te.official_state(model), tmp_path / "te.safetensors", torch.float32)
    encoder = TextEncoder.from_checkpoint(path, te.TOKENIZER, dtype=torch.float32)
    texts = ["a red ball moving left", "one purple triangular shape, floating up over a plain background"]
    with torch.no_grad():
        hidden, mask = te.features(model, encoder.tokenizer, texts)
    ours = encoder.encode(texts)
    for i, n in enumerate(ours.lengths.tolist()):
        assert int(mask[i].sum()) == n
        assert torch.allclose(hidden[i, :n], ours.embeddings[i, :n], atol=1e-5)


def test_the_official_state_round_trips_the_initial_weights():
    state = te.official_state(te.initial_model(3))
    init = te.initial_state(3)
    assert state.keys() == init.keys() and all(torch.equal(state[k], init[k]) for k in init)


def test_text_training_lowers_its_loss_and_repeats_itself():
    settings = attrs.evolve(te.TextTraining(), steps=40, batch=16)
    _, _, history = te.train(0, settings, log_every=0)
    _, _, again = te.train(0, attrs.evolve(settings, steps=3), log_every=0)
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5]), history
    assert again == history[:3]


# ----------------------------------------------------------------------------- DiT


def test_the_dit_starts_as_identity_blocks_with_a_zero_prediction_and_learns(tmp_path):
    files = init_dit.write_dit(tmp_path / "dit", TINY_DIT, seed=0)
    dit = load_dit([files[1]], dtype=torch.float32).train().requires_grad_(True)
    assert dit.cfg == TINY_DIT
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 64)
    inputs = dit.embed_inputs(x, t, ctx)
    assert torch.equal(dit.run_blocks(inputs, inputs.tokens, 0, 2), inputs.tokens)  # every gate shut
    assert torch.count_nonzero(dit(x, t, ctx)) == 0
    opt = torch.optim.Adam(dit.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (dit(x, t, ctx) - x).pow(2).mean().backward()
        opt.step()
    assert dit.blocks[0].self_attn.q.weight.grad.abs().sum() > 0  # the gates opened
    again = init_dit.initial_dit(TINY_DIT, 0)
    assert torch.equal(again.blocks[1].ffn[0].weight, init_dit.initial_dit(TINY_DIT, 0).blocks[1].ffn[0].weight)
    assert not torch.equal(again.blocks[1].ffn[0].weight, init_dit.initial_dit(TINY_DIT, 1).blocks[1].ffn[0].weight)


def test_regridding_keeps_what_the_dit_knows_and_loads_as_a_finer_patched_dit(tmp_path):
    """The fine-grid run's starting point: a latent constant over each old 2x2 patch embeds to
    the old token at every finer token, the finer head paints the mean of the old patch's
    outputs, every other tensor is the trained one, and wanflow loads the folder as patch (1, 1, 1)."""
    coarse = init_dit.initial_dit(TINY_DIT, 0)
    with torch.no_grad():  # open every gate so the head and blocks are not trivially zero
        for p in coarse.parameters():
            p.add_(0.05 * torch.randn_like(p))
    init_dit.write_dit(tmp_path / "coarse", TINY_DIT, seed=0)
    save_weights(coarse.state_dict(), tmp_path / "coarse" / init_dit.WEIGHTS, torch.float32)
    assert regrid_dit.main([str(tmp_path / "coarse"), str(tmp_path / "fine")]) == 0
    fine = load_dit([tmp_path / "fine" / regrid_dit.WEIGHTS], dtype=torch.float32)
    assert fine.cfg == attrs.evolve(TINY_DIT, patch_size=(1, 1, 1))
    blocky = torch.randn(1, 16, 3, 2, 2).repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    with torch.no_grad():
        old_tokens = coarse.patch_embedding(blocky)  # (1, D, 3, 2, 2)
        new_tokens = fine.patch_embedding(blocky)  # (1, D, 3, 4, 4)
        assert torch.allclose(new_tokens, old_tokens.repeat_interleave(2, 3).repeat_interleave(2, 4), atol=1e-5)
        h = torch.randn(5, TINY_DIT.dim)
        old_out = coarse.head.head(h).view(5, 2, 2, TINY_DIT.out_dim)  # (pt=1,) ph, pw, C fastest
        assert torch.allclose(fine.head.head(h), old_out.mean(dim=(1, 2)), atol=1e-5)
    kept = {k for k in coarse.state_dict() if k not in ("patch_embedding.weight", "head.head.weight", "head.head.bias")}
    assert all(torch.equal(coarse.state_dict()[k], fine.state_dict()[k]) for k in kept)
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 64)
    assert fine(x, t, ctx).shape == x.shape
    with pytest.raises(ValueError, match="does not divide"):
        regrid_dit.regrid(coarse.state_dict(), (1, 2, 2), (1, 3, 1), 16)


# ----------------------------------------------------------------------------- family folder


def test_the_family_folder_has_the_tiny_familys_layout_and_loads(tmp_path):
    settings = build_family.FamilySettings(
        attrs.evolve(te.TextTraining(), steps=1, batch=4),
        attrs.evolve(tv.VAETraining(), steps=1, batch=1, window=5), vae_dim=4, dit=TINY_DIT, check=False)
    build_family.build(tmp_path, 0, settings)
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    found = {}
    for name, component in family().components.items():
        found[name] = sorted(f for f in files if any(fnmatch.fnmatch(f, g) for g in component.files))
        assert found[name], f"no file for {name}"
    assert sorted(f for names in found.values() for f in names) == sorted(files)  # nothing outside the family's globs
    pool.clear()
    try:
        dit = pool.dit([tmp_path / f for f in found["dit"]], torch.float32, "cpu", "sdpa")
        encoder = pool.text_encoder(tmp_path / build_family.TEXT_ENCODER_FILE, tmp_path / "tokenizer",
                                    torch.float32, "cpu")
        vae = pool.vae(tmp_path / build_family.VAE_FILE, "wan2.1", torch.float32, "cpu")
    finally:
        pool.clear()
    assert dit.cfg == TINY_DIT and vae.config.dim == 4
    assert encoder.encode(["a red ball moving left"]).embeddings.shape == (1, 512, 64)
    from safetensors import safe_open

    for f in files:
        if f.endswith(".safetensors"):
            with safe_open(str(tmp_path / f), "pt") as fh:
                assert {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict) == {"BF16"}, f
