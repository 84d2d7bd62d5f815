"""The cached encodes of speech-to-video: the speech, the reference image, the pose video and the
motion context, each its own step so that a changed input re-runs only its encode (and what follows).

- ``encode-audio``: the recording decoded at the speech encoder's rate, wav2vec2's 25 hidden
  states, one bucket per video frame of every clip (``wanflow.audio``), or the buckets of
  ``[inputs].audio_embeds``. Its key holds the audio file's content, the speech encoder's files
  (or the embeds file's content), the rate, the fps and the clip length. wav2vec2
  runs on the CPU in fp32 (the official code runs it in fp32 too), so the buckets are the same on
  every machine.
- ``encode-conditioning:s2v-reference``: the reference image's VAE latent (1, 16, 1, h, w),
  resized on its shorter side and centre-cropped as the official code does.
- ``encode-conditioning:s2v-pose``: the pose video read at [video].fps, cut into the clips, each
  clip encoded with a copy of its first frame in front whose latent is then dropped (official
  ``load_pose_cond``): (1, 16, clips·F, h, w).
- ``encode-conditioning:s2v-motion``: the 73 frames before the video (the release's zero frames,
  or the last 73 of ``[inputs].motion_video``) and their 19 latents, the first clip's motion.
  With ``[inputs].start_from_ref`` (the release's ``--start_from_ref``) the last 6 of the zero
  frames are the reference image, prepared as the reference is (shorter side, centre crop).
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.media import image_tensor

#: The official clip loop's motion context: 73 pixel frames, 19 latents.
MOTION_FRAMES = 73
#: The release's ``init_first_frame`` (``--start_from_ref``): the reference image fills the last
#: 6 frames of the zero motion context (``speech2video.generate``).
REFERENCE_FRAMES = 6
AUDIO_READS = ("video.fps", "video.frames", "inputs.audio_sample_rate")
#: The tensor of an ``[inputs].audio_embeds`` file (DiffSynth's name for the buckets).
EMBEDS_TENSOR = "audio_embeds"


def frames_per_clip(params: Any) -> int:
    """Video frames per clip: ``[video].frames − 1`` (81 → the official 80), as DiffSynth counts them."""
    return int(params["video.frames"]) - 1


@attrs.frozen
class EncodeS2VAudio:
    """"buckets" (1, 25, 1024, clips·B): every clip's per-frame speech features; "samples" (1,):
    the recording's length at the encoder's rate (the video is trimmed to it).

    ``precomputed``: the buckets are ``[inputs].audio_embeds``'s first clips·B frames instead of
    wav2vec2's; the recording still sets the clips and the length, and is the video's sound."""

    precomputed: bool = False
    kind: str = "encode-audio"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = AUDIO_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.audio.buckets import frame_buckets, to_bucket_rate
        from wanflow.audio.decode import decode_audio
        from wanflow.audio.wav2vec import load_speech_encoder, speech_hidden_states
        from wanflow.steps.s2v_checks import covering_clips

        p = ctx.params
        rate, fps, clip = int(p["inputs.audio_sample_rate"]), int(p["video.fps"]), frames_per_clip(p)
        audio = decode_audio(ctx.file("audio"), rate)
        clips = covering_clips(len(audio.samples), rate, fps, clip).clips
        if self.precomputed:
            from safetensors.torch import load_file

            buckets = load_file(str(ctx.file("audio_embeds")))[EMBEDS_TENSOR][..., :clips * clip]
        else:
            encoder = load_speech_encoder(ctx.weight("speech_encoder.0").parent)
            with torch.no_grad():
                states = speech_hidden_states(encoder, audio.samples, rate)  # (25, T50, 1024)
            buckets = frame_buckets(to_bucket_rate(states), fps, clip)  # (1, 25, 1024, official clips·B)
            missing = clips * clip - buckets.shape[-1]  # the covering clip: past the recording, silence
            buckets = torch.nn.functional.pad(buckets, (0, missing))  # (1, 25, 1024, clips·B)
        return {"buckets": buckets.float().contiguous(),
                "samples": torch.tensor([len(audio.samples)], dtype=torch.int64)}


@attrs.frozen
class EncodeS2VReference:
    """"latent" (1, 16, 1, h, w): the reference image through the VAE at the video's size."""

    vae_version: str
    dtype: str = "auto"  # [models.vae].dtype
    device: str = "auto"  # [models.vae].device
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-s2v-reference"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        pixels = image_tensor(ctx.file("image"), p["video.width"], p["video.height"])  # (3, 1, H, W)
        return {"latent": encode(self, ctx, pixels).contiguous()}


@attrs.frozen
class EncodeS2VPose:
    """"latents" (1, 16, clips·F, h, w): each clip's pose latents, clip after clip."""

    vae_version: str
    clips: int  # as many as the audio needs (planned from the recording's length)
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-s2v-pose"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*ENCODE_READS, "video.fps")

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.output import load_video, to_model_video

        p = ctx.params
        clip = frames_per_clip(p)
        frames = load_video(ctx.file("s2v_pose_video"), self.clips * clip, p["video.width"], p["video.height"],
                            fps=p["video.fps"])
        pixels = torch.from_numpy(to_model_video(frames))  # (3, clips·B, H, W)
        latents = []
        for r in range(self.clips):
            part = pixels[:, r * clip:(r + 1) * clip]
            led = torch.cat([part[:, :1], part], dim=1)  # (3, 1 + B, H, W): a copy of frame 0 in front
            latents.append(encode(self, ctx, led)[:, :, 1:])  # its latent dropped: (1, 16, B/4, h, w)
        return {"latents": torch.cat(latents, dim=2).contiguous()}


@attrs.frozen
class EncodeS2VMotion:
    """"frames" (1, 3, 73, H, W) in [-1, 1] and their "latents" (1, 16, 19, h, w).

    The frames are the clip loop's pixel context too: with ``from_reference`` the 6 reference frames
    stay in it until the clips have rolled them out, as the release's context shares their tensor."""

    vae_version: str
    given: bool  # [inputs].motion_video is set (else the release's zero frames)
    from_reference: bool = False  # [inputs].start_from_ref: the last 6 zero frames are the reference image
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-s2v-motion"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*ENCODE_READS, "video.fps")

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        w, h = p["video.width"], p["video.height"]
        if self.given:
            from wanflow.steps.s2v_checks import read_motion_video

            pixels = read_motion_video(ctx.file("motion_video"), w, h, p["video.fps"])  # (3, 73, H, W)
        else:
            pixels = torch.zeros(3, MOTION_FRAMES, h, w)
        if self.from_reference:  # the reference as the reference step prepares it: (3, 1, H, W), broadcast
            pixels[:, -REFERENCE_FRAMES:] = image_tensor(ctx.file("image"), w, h)
        return {"frames": pixels[None].contiguous(), "latents": encode(self, ctx, pixels).contiguous()}
