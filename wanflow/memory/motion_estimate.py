"""What Wan2.2-Animate's motion encoder leaves for backward when it trains, from its sizes alone.

Full fine-tuning of Animate trains its motion encoder, which the train step runs over every face
crop of the clip with autograd on (a LoRA's face tokens are encoded once, without). Its tensors
are those of a small conv net at the crop's size (512 px in the release), and they dominate the
step: at 512 px they are about 0.45 GB a crop, where a 480p clip's 40 checkpointed DiT blocks
hold about 1.3 GB. Counted on tiny encoders (``tests/memory/test_train_parts.py``, within 5 %):

- the 1x1 input conv keeps the crop and its activation's input and output: ``(3 + 2 w0) S²``;
- each stride-2 ResBlock at size r and width w keeps its input, its first conv's activation input,
  and both branches' padded and blurred inputs: ``6 w r²``;
- what follows at 4 px and below (the 4x4 conv, the fc layers, the directions) is negligible.
"""

from __future__ import annotations

from wanflow.models.animate_config import MotionEncoderConfig

#: Values each stride-2 ResBlock keeps per pixel and channel of its input.
RES_BLOCK_VALUES = 6


def face_crops(latent_frames: int) -> int:
    """Face crops of a training clip of ``latent_frames`` latent frames: its pixel frames less the
    four the reference image takes (``train_animate``: DiffSynth's ``len(input_video) - 4``)."""
    return 4 * (latent_frames - 1) + 1 - 4


def motion_encoder_bytes(motion: MotionEncoderConfig, crops: int, itemsize: int) -> int:
    """Bytes the motion encoder keeps for backward over ``crops`` face crops."""
    size, widths = motion.size, motion.widths
    values = (3 + 2 * widths[0]) * size * size
    values += sum(RES_BLOCK_VALUES * widths[i] * (size >> i) ** 2 for i in range(motion.res_blocks))
    return crops * values * itemsize
