"""Recognise what a checkpoint holds from its keys and shapes alone (never its file name).

Also says what a file that is not a checkpoint is instead (an image, JSON, a Git LFS pointer...),
from its first bytes.

Only ``.shape`` is read, so a state dict of meta tensors (or a lazily mapped file) costs nothing.
The answer serves two purposes: choosing a key table (official, diffusers or ComfyUI layout) and
telling the user what a wrong file actually is.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

from typing import TYPE_CHECKING

import attrs

from wanflow.file_kinds import binary_kind

if TYPE_CHECKING:  # annotations only: planning reads headers without importing torch
    from torch import Tensor

#: ComfyUI single files carry the DiT's keys under this prefix.
COMFYUI_PREFIX = "model.diffusion_model."

#: Krea Realtime's single file carries the official keys under this prefix.
KREA_PREFIX = "model."

#: Every released Wan DiT has head_dim 128.
WAN_HEAD_DIM = 128

#: (dim, num_layers) -> the released size name.
DIT_SIZES = {(1536, 30): "1.3B", (5120, 40): "14B", (3072, 30): "5B"}

#: variant -> the words a message uses for it.
VARIANT_LABELS = {
    "wan2.1-t2v": "Wan T2V",
    "wan2.1-i2v": "Wan2.1 I2V",
    "wan2.1-flf2v": "Wan2.1 FLF2V",
    "wan2.2-i2v": "Wan2.2 I2V-A14B",
    "wan2.2-ti2v": "Wan2.2 TI2V",
    "wan2.2-animate": "Wan2.2 Animate",
    "wan2.2-s2v": "Wan2.2 S2V",
    "video-as-prompt": "Video-As-Prompt (Wan2.1 I2V + MoT)",
    "longcat-video": "LongCat-Video",
    "vace": "Wan2.1 VACE",
    "fun-inp": "Wan2.1 Fun InP",
    "fun-control": "Wan2.1 Fun Control",
    "fun-control-camera": "Wan2.1 Fun Control-Camera",
    "wan2.2-fun-control": "Wan2.2 Fun Control",
    "wan2.2-fun-control-camera": "Wan2.2 Fun Control-Camera",
    "motion-controller": "speed-control motion controller",
    "wan2.1": "Wan2.1",
    "wan2.2": "Wan2.2",
}


#: A family's DiT architecture name -> the variant ``identify`` reports for its file and the
#: details it must show (derivative parts). Files of the same shapes share a variant: Wan2.1-Fun
#: 14B InP is a Wan2.1 I2V 14B to its keys, Wan2.2-Fun A14B InP a Wan2.2 I2V-A14B, Krea Realtime
#: a Wan T2V 14B (behind ``model.``).
ARCHITECTURES: dict[str, tuple[str, Mapping[str, object]]] = {
    "wan2.1-t2v-1.3b": ("wan2.1-t2v", {}), "wan2.1-t2v-14b": ("wan2.1-t2v", {}),
    "wan2.1-i2v-14b": ("wan2.1-i2v", {}), "wan2.1-flf2v-14b": ("wan2.1-flf2v", {}),
    "wan2.2-t2v-a14b": ("wan2.1-t2v", {}), "wan2.2-i2v-a14b": ("wan2.2-i2v", {}),
    "wan2.2-ti2v-5b": ("wan2.2-ti2v", {}), "wanflow-tiny-dit": ("wan2.1-t2v", {}),
    "wan2.1-vace-1.3b": ("vace", {}), "wan2.1-vace-14b": ("vace", {}), "wan2.2-vace-fun-a14b": ("vace", {}),
    "wan2.1-fun-inp-1.3b": ("fun-inp", {}), "wan2.1-fun-inp-14b": ("wan2.1-i2v", {}),
    "wan2.1-fun-v1.1-inp-1.3b": ("fun-inp", {}), "wan2.1-fun-v1.1-inp-14b": ("wan2.1-i2v", {}),
    "wan2.1-fun-control-1.3b": ("fun-control", {"ref_conv": False}),
    "wan2.1-fun-control-14b": ("fun-control", {"ref_conv": False}),
    "wan2.1-fun-v1.1-control-1.3b": ("fun-control", {"ref_conv": True}),
    "wan2.1-fun-v1.1-control-14b": ("fun-control", {"ref_conv": True}),
    "wan2.1-fun-v1.1-control-camera-1.3b": ("fun-control-camera", {}),
    "wan2.1-fun-v1.1-control-camera-14b": ("fun-control-camera", {}),
    "wan2.2-fun-inp-a14b": ("wan2.2-i2v", {}),
    "wan2.2-fun-control-a14b": ("wan2.2-fun-control", {}),
    "wan2.2-fun-control-camera-a14b": ("wan2.2-fun-control-camera", {}),
    "krea-realtime-video-14b": ("wan2.1-t2v", {}),
    "wan2.1-motion-controller": ("motion-controller", {}),
    "wan2.2-animate-14b": ("wan2.2-animate", {}),
    "longcat-video": ("longcat-video", {}),
    "wan2.2-s2v-14b": ("wan2.2-s2v", {}),
    "video-as-prompt-wan2.1-14b": ("video-as-prompt", {}),
}

#: Detail -> (what it says when True, when False), for mismatch messages.
_DETAIL_WORDS = {"ref_conv": ("with ref_conv (V1.1)", "without ref_conv (V1.0)")}


def architecture_mismatch(architecture: str, found: CheckpointSignature) -> str | None:
    """Why a file of signature ``found`` cannot serve a family's ``architecture``, or None when
    it can (or the architecture is not one of ``ARCHITECTURES``: a plugin's, checked by its loader)."""
    if architecture not in ARCHITECTURES:
        return None
    variant, details = ARCHITECTURES[architecture]
    if found.variant == variant and all(found.details.get(k) == v for k, v in details.items()):
        return None
    wanted = " ".join([VARIANT_LABELS.get(variant, variant)]
                      + [_DETAIL_WORDS[k][0 if v else 1] for k, v in details.items()])
    kind = "" if variant == "motion-controller" else " DiT"
    return f"needs a {wanted}{kind} ({architecture}), but the file looks like {found.describe()}"


@attrs.frozen
class CheckpointSignature:
    """What a checkpoint is, as far as its keys and shapes tell."""

    kind: str  # "dit" | "vae" | "umt5" | "clip" | "unknown"
    variant: str  # "wan2.1-t2v", "wan2.2-ti2v", "vace", "fun-control", "wan2.1" (VAE), ... or ""
    layout: str  # "official" | "diffusers" | "comfyui"
    details: Mapping[str, object] = attrs.field(factory=dict)

    def describe(self) -> str:
        """A phrase for messages: 'a Wan2.1 I2V DiT (dim 5120, 40 layers, ...; official key layout)'."""
        label = VARIANT_LABELS.get(self.variant, self.variant)
        d = self.details
        if self.kind == "dit":
            size = f"{d['size']}, " if d.get("size") else ""
            inner = f"{size}dim {d['dim']}, {d['num_layers']} layers, {d['in_dim']} input channels"
            return f"a {label} DiT ({inner}{_parts(d)}; {self.layout} key layout)"
        if self.kind == "motion-controller":
            return f"a {label} (dim {d['dim']}; {self.layout} key layout)"
        if self.kind == "vae":
            return f"a {label} VAE (z_dim {d['z_dim']}; {self.layout} key layout)"
        if self.kind == "umt5":
            inner = f"d_model {d['d_model']}, {d['num_layers']} layers, vocab {d['vocab_size']}"
            return f"a umT5 text encoder ({inner}; {self.layout} key layout)"
        if self.kind == "clip":
            text = ", with its text tower" if d.get("has_text_tower") else ""
            inner = f"width {d['width']}, {d['num_layers']} layers, patch {d['patch_size']}{text}"
            return f"a CLIP image encoder (ViT {inner}; {self.layout} key layout)"
        return str(d.get("summary", "an unrecognised checkpoint"))


def _parts(d: Mapping[str, object]) -> str:
    """The derivative parts of a DiT, for its description: ', 15 VACE blocks, ref_conv'."""
    parts = [f"{d['vace_layers']} VACE blocks"] if d.get("vace_layers") else []
    parts += ["ref_conv"] if d.get("ref_conv") else []
    parts += ["camera adapter"] if d.get("camera_in_dim") else []
    return "".join(", " + p for p in parts)


def unprefixed(state: Mapping[str, Tensor]) -> tuple[str, Mapping[str, Tensor]]:
    """(layout, state without its prefix): ComfyUI's ``model.diffusion_model.`` on any key, or
    Krea's ``model.`` on every key; ("official", state) when neither."""
    keys = list(state)
    for prefix, layout, test in ((COMFYUI_PREFIX, "comfyui", any), (KREA_PREFIX, "krea", all)):
        if keys and test(k.startswith(prefix) for k in keys):
            return layout, {k.removeprefix(prefix): v for k, v in state.items()}
    return "official", state


def identify(state: Mapping[str, Tensor]) -> CheckpointSignature:
    """Classify a state dict (DiT, VAE, umT5, CLIP, motion controller) by its marker keys and shapes."""
    layout, state = unprefixed(state)
    keys = set(state)
    for recogniser in (_dit, _longcat, _vae, _umt5, _clip, _motion_controller):
        found = recogniser(state, keys, layout)
        if found is not None:
            return found
    return _unknown(state)


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...] | None:
    """The shape of `key`, or None when it is absent."""
    return tuple(state[key].shape) if key in state else None


def _count(keys: set[str], pattern: str) -> int:
    """1 + the largest N in keys matching `pattern` (a regex with one `(\\d+)` group)."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- DiT


def _dit(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """Wan DiT in the official/ComfyUI layout or diffusers' `WanTransformer3DModel` layout."""
    patch = _shape(state, "patch_embedding.weight")  # (dim, in_dim, 1, 2, 2)
    if patch is None or len(patch) != 5:
        return None
    diffusers = "condition_embedder.time_embedder.linear_1.weight" in keys
    if not diffusers and "time_embedding.0.weight" not in keys:
        return None
    head = _shape(state, "proj_out.weight" if diffusers else "head.head.weight")
    dim, in_dim, layers = patch[0], patch[1], _count(keys, r"blocks\.(\d+)\.")
    details = {
        "dim": dim,
        "in_dim": in_dim,
        "out_dim": head[0] // (patch[2] * patch[3] * patch[4]) if head else None,
        "num_layers": layers,
        "num_heads": dim // WAN_HEAD_DIM,
        "size": DIT_SIZES.get((dim, layers)),
        "vace_layers": _count(keys, r"vace_blocks\.(\d+)\."),
        "ref_conv": "ref_conv.weight" in keys,
        "camera_in_dim": (_shape(state, "control_adapter.conv.weight") or (0, 0))[1] // 64,
    }
    ffn = _shape(state, "blocks.0.ffn.net.0.proj.weight" if diffusers else "blocks.0.ffn.0.weight")
    details["ffn_dim"] = ffn[0] if ffn else None
    variant = _dit_variant(keys, details, diffusers)
    return CheckpointSignature("dit", variant, "diffusers" if diffusers else layout, details)


def _dit_variant(keys: set[str], details: dict[str, object], diffusers: bool) -> str:
    """The model type from in/out channels and the extra modules a variant adds."""
    image = "condition_embedder.image_embedder.norm1.weight" if diffusers else "img_emb.proj.0.weight"
    pos = "condition_embedder.image_embedder.pos_embed" if diffusers else "img_emb.emb_pos"
    has_image, in_dim = image in keys, details["in_dim"]
    details["has_image_embedding"] = has_image
    if details["vace_layers"]:
        return "vace"
    if "pose_patch_embedding.weight" in keys:
        return "wan2.2-animate"
    if "casual_audio_encoder.weights" in keys:  # (sic: the released name)
        return "wan2.2-s2v"
    if "patch_embedding_mot_ref.weight" in keys or any(k.startswith("mot.blocks.") for k in keys):
        return "video-as-prompt"
    if any(k.startswith("control_adapter.") for k in keys):
        return "fun-control-camera" if has_image else "wan2.2-fun-control-camera"
    if "ref_conv.weight" in keys or in_dim in (48, 52) and details["out_dim"] == 16:
        return "fun-control" if has_image else "wan2.2-fun-control"
    if pos in keys:
        return "wan2.1-flf2v"
    if has_image:
        return "fun-inp" if details["dim"] == 1536 else "wan2.1-i2v"
    if details["out_dim"] == 48:
        return "wan2.2-ti2v"
    return "wan2.2-i2v" if in_dim == 36 else "wan2.1-t2v"


def _longcat(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """LongCat-Video's own DiT (its own names: ``x_embedder``, fused ``attn.qkv``), not a Wan DiT."""
    patch = _shape(state, "x_embedder.proj.weight")  # (dim, in_channels, 1, 2, 2)
    if patch is None or "blocks.0.attn.qkv.weight" not in keys:
        return None
    details = {"dim": patch[0], "in_dim": patch[1], "num_layers": _count(keys, r"blocks\.(\d+)\.")}
    return CheckpointSignature("dit", "longcat-video", layout, details)


#: The key set of the speed-control motion controller (an MLP stored alone).
_MOTION_KEYS = {f"linear.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def _motion_controller(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """DiffSynth's speed-control controller: linear.0 (D, 256), linear.2 (D, D), linear.4 (6D, D)."""
    if keys != _MOTION_KEYS:
        return None
    dim, freq_dim = _shape(state, "linear.0.weight")
    return CheckpointSignature("motion-controller", "motion-controller", layout,
                               {"dim": dim, "freq_dim": freq_dim})


# ----------------------------------------------------------------------------- VAE


def _vae(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """Wan VAE 2.1 (z 16, RGB in) or 2.2 (z 48, 12 patchified channels in, nested blocks)."""
    if "conv2.weight" in keys and "encoder.conv1.weight" in keys:
        z_dim, in_ch = _shape(state, "conv2.weight")[0], _shape(state, "encoder.conv1.weight")[1]
        nested = any(k.startswith("encoder.downsamples.0.downsamples.") for k in keys)
    elif "post_quant_conv.weight" in keys and "encoder.conv_in.weight" in keys:
        z_dim = _shape(state, "post_quant_conv.weight")[0]
        in_ch, nested, layout = _shape(state, "encoder.conv_in.weight")[1], False, "diffusers"
    else:
        return None
    version = "wan2.2" if nested or in_ch == 12 or z_dim == 48 else "wan2.1"
    details = {"z_dim": z_dim, "in_channels": in_ch}
    return CheckpointSignature("vae", version, layout, details)


# ----------------------------------------------------------------------------- encoders


#: (embedding, layer-0 relative bias, layer-0 fc1, block-number regex) per umT5 key layout.
_UMT5_KEYS = {
    "official": ("token_embedding.weight", "blocks.0.pos_embedding.embedding.weight",
                 "blocks.0.ffn.fc1.weight", r"blocks\.(\d+)\."),
    "diffusers": ("shared.weight",
                  "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  "encoder.block.0.layer.1.DenseReluDense.wi_1.weight", r"encoder\.block\.(\d+)\."),
}


def _umt5(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """umT5 encoder: official names, or transformers' with a bias in every layer (not T5's)."""
    if "token_embedding.weight" in keys and _UMT5_KEYS["official"][1] in keys:
        emb, bias, ffn, rx = _UMT5_KEYS["official"]
    elif "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys:
        layout = "diffusers"
        emb, bias, ffn, rx = _UMT5_KEYS["diffusers"]
    else:
        return None
    vocab, d_model = _shape(state, emb) or (0, 0)
    buckets, heads = _shape(state, bias)
    details = {
        "vocab_size": vocab, "d_model": d_model, "num_layers": _count(keys, rx),
        "num_heads": heads, "num_buckets": buckets, "d_ff": (_shape(state, ffn) or (None,))[0],
    }
    return CheckpointSignature("umt5", "umt5", layout, details)


def _clip(state: Mapping[str, Tensor], keys: set[str], layout: str) -> CheckpointSignature | None:
    """open-clip XLM-R ViT (official `visual.*`, maybe whole model) or transformers' CLIP vision."""
    text = "log_scale" in keys or any(k.startswith("textual.") for k in keys)
    if any(k.startswith("visual.transformer.") or k == "visual.patch_embedding.weight" for k in keys):
        patch, variant = "visual.patch_embedding.weight", "open-clip"
        rx = r"visual\.transformer\.(\d+)\."
    elif "vision_model.embeddings.patch_embedding.weight" in keys:
        patch, variant, layout = "vision_model.embeddings.patch_embedding.weight", "clip-vit", "diffusers"
        rx = r"vision_model\.encoder\.layers\.(\d+)\."
        text = any(k.startswith("text_model.") for k in keys)
    elif "log_scale" in keys and text:
        patch, rx, variant = "", r"visual\.transformer\.(\d+)\.", "open-clip"
    else:
        return None
    shape = _shape(state, patch)  # (width, 3, patch, patch)
    details = {
        "width": shape[0] if shape else None, "patch_size": shape[-1] if shape else None,
        "num_layers": _count(keys, rx), "has_text_tower": text,
    }
    return CheckpointSignature("clip", variant, layout, details)


def _unknown(state: Mapping[str, Tensor]) -> CheckpointSignature:
    """Nothing recognised: say how many tensors and show the first few names."""
    if not state:
        return CheckpointSignature("unknown", "", "official", {"summary": "an empty state dict"})
    first = ", ".join(sorted(state)[:4])
    summary = f"an unrecognised checkpoint ({len(state)} tensors; first keys: {first})"
    return CheckpointSignature("unknown", "", "official", {"summary": summary})


# ----------------------------------------------------------------------------- files


def sniff_file(path: Path) -> tuple[str, str]:
    """(kind, description) from a file's first bytes, never from its name."""
    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        return "empty", "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy", "a pickle (legacy PyTorch format)"
    if len(head) >= 9 and struct.unpack("<Q", head[:8])[0] < 1 << 30 and head[8:9] == b"{":
        return "safetensors", "a safetensors file"  # a header past the end is caught as truncated
    described = binary_kind(head)  # after the checkpoint formats: a safetensors length may look like MPEG sync
    if described:
        return "other", described
    return _sniff_text(head)


def _sniff_zip(path: Path) -> tuple[str, str]:
    """A PyTorch checkpoint is a zip with a data.pkl; any other zip is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "torch-zip", "a damaged zip (perhaps a truncated PyTorch checkpoint)"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-zip", "a PyTorch checkpoint"
    return "other", f"a zip archive of {len(names)} files, not a PyTorch checkpoint"


def _sniff_text(head: bytes) -> tuple[str, str]:
    """Text files: JSON, HTML (often a download error page) or plain text."""
    text = next((t for n in range(4) if (t := _utf8(head[: len(head) - n])) is not None), None)
    if text is None:
        return "other", f"binary data of unknown format (starts with {head[:8].hex(' ')})"
    text = text.lstrip()
    if not text:
        return "other", "a file of blank text"
    if text[0] in "{[":
        return "json", "a JSON file"
    if text[:1] == "<":
        return "other", "an HTML/XML document (a download error page?)"
    return "other", f"a text file starting {text[:24]!r}"


def _utf8(data: bytes) -> str | None:
    """The text of `data` if it is UTF-8 without control characters, else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if any(c < " " and c not in "\t\r\n" for c in text) else text
