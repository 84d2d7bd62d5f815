"""The CLIP ViT-H/14 image encoder of Wan2.1 I2V and FLF2V.

The network is transformers' ``CLIPVisionModel``; the ``visual.*`` tower of the official
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` is converted at load (the fused
``to_qkv`` split into q, k, v; class/position embeddings reshaped; the text tower ignored).
Preprocessing and the output are the official ones: bicubic resize of the [-1, 1] image straight
to 224x224 (no crop), CLIP normalisation, and the penultimate block's tokens without post-norm.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models.checkpoint_files import Checkpoint, open_weights
from wanflow.models.loading import build_on_meta, load_state_into, rename_keys
from wanflow.models.precision import adopt
from wanflow.models.signature import identify

log = structlog.get_logger(__name__)

#: CLIP's normalisation constants (official `clip.py`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: ViT-H has 80-dim heads (1280 / 16); the checkpoint's shapes do not store the head count.
HEAD_DIM = 80

#: Official `visual.` key -> vision-transformer key (after the fused qkv has been split); older
#: transformers nest these under `vision_model.` (see `tower`).
CLIP_KEY_TABLE: tuple[tuple[str, str], ...] = (
    (r"patch_embedding\.weight", r"embeddings.patch_embedding.weight"),
    (r"cls_embedding", r"embeddings.class_embedding"),
    (r"pos_embedding", r"embeddings.position_embedding.weight"),
    (r"pre_norm\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"post_norm\.(weight|bias)", r"post_layernorm.\1"),
    (r"transformer\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"transformer\.(\d+)\.attn\.([qkv])\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"transformer\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.(\d+)\.mlp\.0\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"transformer\.(\d+)\.mlp\.2\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
)


@attrs.frozen
class ClipVisionSettings:
    """Architecture of the ViT tower; the released size is `VIT_H_14`."""

    width: int
    num_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    mlp_dim: int
    eps: float = 1e-5  # torch LayerNorm default, as the official tower uses

    def to_transformers(self) -> CLIPVisionConfig:
        """The equivalent transformers config (exact erf GELU, pre-norm)."""
        return CLIPVisionConfig(
            hidden_size=self.width, intermediate_size=self.mlp_dim,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            image_size=self.image_size, patch_size=self.patch_size, num_channels=3,
            hidden_act="gelu", layer_norm_eps=self.eps, attention_dropout=0.0,
        )


#: open-clip XLM-RoBERTa-large ViT-H/14 visual tower, as Wan2.1 uses it.
VIT_H_14 = ClipVisionSettings(
    width=1280, num_layers=32, num_heads=16, patch_size=14, image_size=224, mlp_dim=5120
)


def settings_from_state(visual: Mapping[str, Tensor]) -> ClipVisionSettings:
    """Read the tower's architecture off the (prefix-stripped) `visual.*` shapes."""
    width, _, patch, _ = visual["patch_embedding.weight"].shape
    grid = round((visual["pos_embedding"].shape[1] - 1) ** 0.5)
    layers = 1 + max(int(k.split(".")[1]) for k in visual if k.startswith("transformer."))
    if width % HEAD_DIM:
        raise ModelLoadError(f"CLIP width {width} is not a multiple of the {HEAD_DIM}-dim heads.")
    return ClipVisionSettings(
        width=width, num_layers=layers, num_heads=width // HEAD_DIM, patch_size=patch,
        image_size=grid * patch, mlp_dim=visual["transformer.0.mlp.0.weight"].shape[0],
    )


def split_qkv(visual: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Replace each fused `attn.to_qkv` by `attn.q/k/v`: three equal chunks of dim 0, q first."""
    out: dict[str, Tensor] = {}
    for key, value in visual.items():
        if ".attn.to_qkv." in key:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[key.replace(".to_qkv.", f".{name}.")] = part  # (width, ...) each
        else:
            out[key] = value
    return out


def tower(model: CLIPVisionModel) -> torch.nn.Module:
    """The vision transformer itself (transformers < 5 wraps it as `vision_model`)."""
    return getattr(model, "vision_model", model)


def to_transformers_keys(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Official checkpoint -> `CLIPVisionModel` state: visual tower only, qkv split, reshapes."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    visual.pop("head", None)  # the projection to the text space; Wan uses the tokens before it
    visual["cls_embedding"] = visual["cls_embedding"].reshape(-1)  # (1, 1, W) -> (W,)
    visual["pos_embedding"] = visual["pos_embedding"][0]  # (1, P, W) -> (P, W)
    renamed = rename_keys(split_qkv(visual), CLIP_KEY_TABLE)
    return {prefix + k: v for k, v in renamed.items()}


class ImageEncoder:
    """CLIP vision tower producing the official (B, 257, 1280) penultimate-block tokens."""

    def __init__(self, model: CLIPVisionModel):
        self.model = model.eval()
        self.image_size = model.config.image_size

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, *, dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
    ) -> ImageEncoder:
        """The official open-clip `.pth` or its state dict (whole model; only `visual.*` is used)."""
        opened = open_weights(checkpoint)
        return cls(build_model(opened.state, source=opened.source, dtype=dtype, device=device,
                               borrowed=opened.borrowed))

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) CLIP input: bicubic squash, no crop, normalise."""
        _check_images(images)
        param = tower(self.model).embeddings.patch_embedding.weight
        x = images.to(device=param.device, dtype=torch.float32)
        size = (self.image_size, self.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)  # (B, 3, S, S)
        x = x * 0.5 + 0.5
        mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).to(param.dtype)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1 + (S/patch)^2, width) tokens of the penultimate block."""
        pixels = self.preprocess(images)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2]  # (B, 257, 1280); no post-norm


def build_model(
    state: Mapping[str, Tensor], *, source: str, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu", borrowed: bool = True,
) -> CLIPVisionModel:
    """A `CLIPVisionModel` shaped after the checkpoint, built on meta and loaded strictly.

    ``borrowed``: the tensors are the caller's, copied into the model (False: read from a file
    by the loader, whose mapped pages may be released).
    """
    found = identify(state)
    if found.kind != "clip" or found.layout != "official" or "visual.pos_embedding" not in state:
        raise ModelLoadError(
            f"{source}: expected the open-clip XLM-RoBERTa ViT-H/14 checkpoint "
            "(models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), but this looks like "
            f"{found.describe()}."
        )
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    settings = settings_from_state(visual)
    model = build_on_meta(lambda: CLIPVisionModel(settings.to_transformers()))
    name = f"CLIP vision tower (width {settings.width}, {settings.num_layers} layers)"
    converted = to_transformers_keys(state, "vision_model." if tower(model) is not model else "")
    load_state_into(model, converted, source=source, expected=name, dtype=dtype, device=device,
                    borrowed=borrowed)
    _rebuild_position_ids(model, device)
    return adopt(model).eval()  # bf16 on a CPU without bf16 kernels: fp32 GEMMs


def _rebuild_position_ids(model: CLIPVisionModel, device: torch.device | str) -> None:
    """The non-persistent `position_ids` buffer is not in any file; it stayed on meta."""
    embeddings = tower(model).embeddings
    ids = torch.arange(embeddings.num_positions, device=device).expand(1, -1)  # (1, P)
    embeddings.register_buffer("position_ids", ids, persistent=False)


def _check_images(images: Tensor) -> None:
    """A clear error before any work for a wrongly shaped or scaled image batch."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ModelInputError(f"images must be a (B, 3, H, W) tensor in [-1, 1], got {shape}.")
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001:
        raise ModelInputError(
            f"images must be scaled to [-1, 1], got values in [{low:.3g}, {high:.3g}]; "
            "map 8-bit pixels with x / 127.5 - 1."
        )
