"""A tiny Wan-AI/Wan2.2-S2V-14B repository in its real layout, under a models root.

Everything sits in the repository's root folder, as released: the DiT in four
``diffusion_pytorch_model-0000N-of-00004.safetensors`` shards behind their index, beside the
``WanModel_S2V`` config.json; ``models_t5_umt5-xxl-enc-bf16.pth`` and ``google/umt5-xxl/``;
``Wan2.1_VAE.pth``; and ``wav2vec2-large-xlsr-53-english/`` (config.json, a ``Wav2Vec2ForCTC``
model.safetensors with the old weight-norm names, preprocessor_config.json). The wav2vec2 is
tiny (width 24) but has the release's 24 layers, so that the DiT mixes 25 hidden states.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from tests.e2e._layout import _link, tiny, write_shards, write_shared
from wanflow.models.loading import build_on_meta
from wanflow.models.s2v import S2VDiT
from wanflow.models.s2v_config import S2VConfig

REPO = "Wan-AI/Wan2.2-S2V-14B"
SHARDS = 4
SPEECH = "wav2vec2-large-xlsr-53-english"
AUDIO_DIM = 24


def tiny_s2v_config() -> S2VConfig:
    """The tiny T2V DiT (2 heads of 64) with three blocks, audio injectors after blocks 0 and 2."""
    return S2VConfig(attrs.evolve(tiny.tiny_dit_config("t2v", 16, 16), num_layers=3), inject_layers=(0, 2),
                     audio_dim=AUDIO_DIM)


def s2v_state(cfg: S2VConfig, seed: int) -> dict:
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: S2VDiT(cfg)).state_dict().items()}
    return tiny._seeded(shapes, seed, 0.1)


def config_json(cfg: S2VConfig) -> dict:
    """The released config.json's fields, at the tiny sizes."""
    d = cfg.dit
    return {"_class_name": "WanModel_S2V", "_diffusers_version": "0.33.1", "model_type": "s2v", "dim": d.dim,
            "ffn_dim": d.ffn_dim, "num_heads": d.num_heads, "num_layers": d.num_layers, "in_dim": d.in_dim,
            "out_dim": d.out_dim, "freq_dim": d.freq_dim, "eps": d.eps, "text_len": d.text_len,
            "text_dim": d.text_dim, "audio_dim": cfg.audio_dim, "cond_dim": cfg.cond_dim,
            "audio_inject_layers": list(cfg.inject_layers), "enable_adain": True, "adain_mode": "attn_norm",
            "zero_init": True, "zero_timestep": True, "enable_motioner": False, "enable_framepack": True,
            "framepack_drop_mode": "padd", "add_last_motion": True, "motion_frames": 73}


def write_dit(folder: Path, seed: int = 40) -> None:

    cfg = tiny_s2v_config()
    (folder / "config.json").write_text(json.dumps(config_json(cfg), indent=2))
    state = {k: v.contiguous() for k, v in s2v_state(cfg, seed).items()}
    write_shards(folder, state, SHARDS)


def write_speech_encoder(folder: Path, seed: int = 41) -> None:
    """A seeded Wav2Vec2ForCTC of the released front end and depth, saved as the repository holds it."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(hidden_size=AUDIO_DIM, num_hidden_layers=24, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                            num_feat_extract_layers=7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                            do_stable_layer_norm=True, feat_extract_norm="layer", vocab_size=12)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config).eval()
    state = {k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v.contiguous()
             for k, v in model.state_dict().items()}
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
         "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000}))


def write_s2v_models_root(root: Path) -> Path:
    """The S2V release: its DiT, encoders, VAE and speech encoder, all in the repository's root."""
    write_shared(root / ".shared")
    folder = root / REPO
    folder.mkdir(parents=True)
    write_dit(folder)
    for name, src in {"models_t5_umt5-xxl-enc-bf16.pth": "umt5.pth", "google/umt5-xxl": "tokenizer",
                      "Wan2.1_VAE.pth": "wan2.1.pth"}.items():
        _link(root / ".shared" / src, folder / name)
    write_speech_encoder(folder / SPEECH)
    return root
