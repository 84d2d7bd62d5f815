"""reference-latent and the reference's CLIP priority (derivatives facts §4.3).

The reference image's latent is the stand-in VAE's encoding of the image alone, one frame
(1, 16, h, w), handed to the DiT as ``DitExtras.reference``. Without a reference the Fun authors
pass a zero latent (the default); DiffSynth passes none (``without_reference = "skip"``). CLIP of
Wan2.1-Fun Control reads the reference when given, else the start image, else zeros.
"""

from __future__ import annotations

import torch

from tests.conditioners._standins import (
    HEIGHT,
    WIDTH,
    Z,
    family,
    job,
    pixels,
    run_node,
    use_stand_in_vae,
    write_image,
)
from wanflow.conditioners import conditioner
from wanflow.steps.cond_kinds import model_call, nodes

AUTHORS = (conditioner("reference-latent"),)
DIFFSYNTH = (conditioner("reference-latent", without_reference="skip"),)


def extras_of(declared, files):
    planned = nodes(job(family(*declared), files), declared)
    tensors = {role: run_node(spec) for role, spec in planned}
    return model_call([role for role, _ in planned], tensors).extras


def test_the_reference_is_the_latent_of_the_image_alone(tmp_path, monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    image = pixels(write_image(tmp_path / "ref.png", 5))  # (3, 1, H, W)
    extras = extras_of(AUTHORS, {"reference_image": tmp_path / "ref.png"})
    assert extras.reference.shape == (1, Z, HEIGHT // 8, WIDTH // 8)
    torch.testing.assert_close(extras.reference, vae.encode(image[None])[:, :, 0], rtol=0, atol=1e-5)
    assert extras.camera is None and extras.modulation is None


def test_without_a_reference_the_authors_pass_zeros_and_diffsynth_nothing(monkeypatch):
    use_stand_in_vae(monkeypatch)
    extras = extras_of(AUTHORS, {})
    assert torch.equal(extras.reference, torch.zeros(1, Z, HEIGHT // 8, WIDTH // 8))
    assert nodes(job(family(*DIFFSYNTH), {}), DIFFSYNTH) == []
    assert model_call([], {}).extras is None


def test_clip_reads_the_reference_first_then_the_start_image_then_zeros(tmp_path):
    declared = (conditioner("clip-tokens", images="reference", without_image="zeros"),)
    fam = family(*declared, clip=True)
    ref, start = tmp_path / "ref.png", tmp_path / "start.png"

    def planned(files):
        (role, spec), = nodes(job(fam, files), declared)
        assert role == "clip"
        return spec

    assert dict(planned({"reference_image": ref, "image": start}).files) == {"reference_image": ref}
    assert dict(planned({"image": start}).files) == {"image": start}
    zeros = planned({}).step
    assert zeros.kind == "zero-conditioning" and zeros.shape == (1, 257, 1280)
    first = (conditioner("clip-tokens", images="first", without_image="zeros"),)
    (_, spec), = nodes(job(family(*first, clip=True), {"reference_image": ref, "image": start}), first)
    assert dict(spec.files) == {"image": start}  # "first" never reads a reference
