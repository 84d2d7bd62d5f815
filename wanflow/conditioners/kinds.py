"""The registered kinds of conditioner: what each reads, what it hands the model, its options.

A kind is named once here (torch-free, so families, validation and docs can speak of it) and
implemented once in ``wanflow.steps`` (its cached step and its hand-off). Its ``role`` is the
name its tensors arrive under at the denoise step, so a role names exactly one kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

#: The parts of the per-job model call a conditioner can fill (``wanflow.steps.cond_call``):
#: extra input channels (y), extra context tokens (CLIP), DiT extras (VACE, reference, camera,
#: modulation), per-token timesteps, a latent clamp after every step, the starting latent, and
#: latent frames dropped after sampling.
HANDS = ("channels", "tokens", "extras", "timesteps", "clamp", "start", "drop")


@attrs.frozen
class Option:
    """One option of a kind: its allowed values, the first being the default, and why it exists."""

    name: str
    choices: tuple[object, ...]
    why: str

    @property
    def default(self) -> object:
        return self.choices[0]


@attrs.frozen
class Kind:
    """A kind of conditioner, as families declare it and validation checks it."""

    name: str  # "image-channels"
    role: str  # the denoise step's input role of its tensors: "y"
    summary: str
    reads: tuple[str, ...]  # the [inputs] it reads (each optional unless the family requires it)
    hands: frozenset[str]  # the parts of the model call it fills (HANDS)
    options: tuple[Option, ...] = ()

    def __attrs_post_init__(self) -> None:
        unknown = sorted(self.hands - set(HANDS))
        if unknown:
            raise ValueError(f"conditioner kind {self.name!r}: hands {unknown}, not parts of a model "
                             f"call; choose from {list(HANDS)}")

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise ValueError(f"conditioner kind {self.name!r} has no option {name!r}; its options: "
                         f"{[o.name for o in self.options] or 'none'}")


_WITHOUT_IMAGE = Option("without_image", ("skip", "zeros"),
                        "no start image: plan nothing (the family requires one), or hand over zeros "
                        "(the Fun models, trained with and without a start image)")

KINDS: Mapping[str, Kind] = {k.name: k for k in (
    Kind("clip-tokens", "clip", "CLIP tokens (257 per image) of the start (and end) image, joined "
         "to the text context of every cross-attention", ("image", "end_image", "reference_image"),
         frozenset({"tokens"}),
         (Option("images", ("given", "first", "reference"), "every given image (FLF2V), the start image "
                 "alone (Wan-Fun InP: its end image is not CLIP-encoded), or the reference image when "
                 "one is given, else the start image (Wan2.1-Fun Control)"), _WITHOUT_IMAGE)),
    Kind("image-channels", "y", "I2V channels: a 4-channel mask of the given pixel frames, then the "
         "VAE latents of [start, zeros…(, end)]", ("image", "end_image"), frozenset({"channels"}),
         (_WITHOUT_IMAGE,)),
    Kind("start-latent", "start_image", "the VAE latent of the start image at latent frame 0 and a "
         "fill after it (Wan2.1 Fun Control); zeros without a start image", ("image",),
         frozenset({"channels"}),
         (Option("fill", ("zeros", "grey"), "after frame 0: zeros (the Fun authors' code and training), "
                 "or the VAE latents of mid-grey frames (DiffSynth)"),)),
    Kind("control-latents", "control", "the VAE latents of the control video (depth, pose, canny…), "
         "one input frame per output frame", ("control_video",), frozenset({"channels"})),
    Kind("first-frame-latent", "z0", "the start image's latent kept as latent frame 0: clamped after "
         "every step, its tokens at timestep 0 (TI2V)", ("image",), frozenset({"timesteps", "clamp"})),
    Kind("source-latent", "x0", "the latent of the input video (or a still image held) that "
         "[sampler].denoising_strength < 1 starts from", ("video", "image"), frozenset({"start"})),
    Kind("reference-latent", "reference", "the VAE latent of the reference image (one frame of the "
         "video's size), made into tokens by ref_conv (Fun V1.1 / Wan2.2 Control)", ("reference_image",),
         frozenset({"extras"}),
         (Option("without_reference", ("zeros", "skip"), "no reference image: a zero latent (the Fun "
                 "authors' code and training), or no reference tokens at all (DiffSynth)"),)),
    Kind("camera-plucker", "camera", "the Plücker embedding of the camera poses ([inputs.camera]: a "
         "direction and speed, or a pose file), four pixel frames per latent frame, for the camera "
         "adapter (Fun Control-Camera)", ("camera",), frozenset({"extras"}),
         (Option("directions", ("translate", "tilt"), "a direction moves the camera centre (the Fun "
                 "authors' preset pose files), or shears the rotation so the rays tilt (DiffSynth)"),)),
    Kind("motion-bucket", "motion", "the speed-control motion controller's offset of every block's "
         "modulation for [inputs].motion_bucket", ("motion_bucket",), frozenset({"extras"})),
    Kind("vace-context", "vace", "the 96-channel VACE context ([inputs.vace]: video, mask, reference "
         "images): E(video·(1−m)), E(video·m) and the 8×8 mask, each reference image a leading latent "
         "frame [E(ref), 0, 0] that is also added to the noise and dropped after sampling; the hints' "
         "scale", ("vace",), frozenset({"extras", "drop"})),
    Kind("vap-video", "vap", "Video-As-Prompt's reference video, resampled evenly to the clip's frames: "
         "its VAE latent, its first frame's I2V condition (mask, latent) and CLIP tokens, for the "
         "reference stream", ("vap_video",), frozenset({"extras"})),
    Kind("vap-prompt", "vap_prompt", "the umT5 features of the reference video's caption, the "
         "reference stream's text context", ("vap_prompt",), frozenset({"extras"})),
    Kind("vap-negative-prompt", "vap_negative", "the umT5 features of the negative reference caption, "
         "the reference stream's text context in guidance's unconditional pass (none at cfg = 1)",
         ("negative_vap_prompt",), frozenset({"extras"})),
    Kind("s2v-audio", "s2v_audio", "speech-to-video's speech: the recording decoded at the encoder's rate, "
         "wav2vec2's 25 hidden states, one bucket per video frame of every clip, for the audio injectors",
         ("audio", "audio_sample_rate", "audio_embeds"), frozenset({"extras"})),
    Kind("s2v-reference", "s2v_reference", "the VAE latent of speech-to-video's reference image, its own "
         "tokens at RoPE frame 30", ("image",), frozenset({"extras"})),
    Kind("s2v-pose", "s2v_pose", "the VAE latents of speech-to-video's pose video, clip by clip, added to "
         "the video tokens through cond_encoder (none: zero latents)", ("s2v_pose_video",), frozenset({"extras"})),
    Kind("s2v-motion", "s2v_motion", "the 73 frames before speech-to-video's first clip (zeros, or the last "
         "73 of the motion video) and their latents, the motion context the clip loop rolls on; "
         "start_from_ref puts the reference image in the last 6",
         ("motion_video", "start_from_ref"), frozenset({"extras"})),
    Kind("longcat-frames", "longcat", "LongCat-Video's continuation: the VAE latents of the last "
         "[inputs].longcat_cond_frames frames of [inputs].longcat_video (or of [inputs].image alone, "
         "image-to-video), held clean as the clip's first latent frames (t = 0, attending only to themselves)",
         ("longcat_video", "image"), frozenset({"clamp"})),
    Kind("animate-reference", "animate_reference", "Wan2.2-Animate's character image, letterboxed onto black "
         "at the video's size: its VAE latent (latent frame 0 of every clip) and its CLIP tokens",
         ("reference_image",), frozenset({"tokens", "channels"})),
    Kind("animate-pose", "animate_pose", "Wan2.2-Animate's pose video, VAE-encoded clip by clip, added to "
         "the patch tokens of every latent frame but the reference's", ("pose_video",), frozenset({"extras"})),
    Kind("animate-face", "animate_face", "Wan2.2-Animate's face video: each clip's face tokens (the DiT's "
         "motion and face encoders) for the face blocks, black crops' for the unconditional pass",
         ("face_video",), frozenset({"extras"})),
    Kind("animate-background", "animate_background", "Wan2.2-Animate replacement: each clip's background "
         "frames, which the clip loop encodes behind the previous clip's last frames into the condition "
         "channels", ("background_video",), frozenset({"channels"})),
    Kind("animate-mask", "animate_mask", "Wan2.2-Animate replacement: each clip's keep mask (1 − the person) "
         "on the latent grid, the condition channels' mask", ("mask",), frozenset({"channels"})),
)}


def kind_named(name: str) -> Kind:
    """The registered kind ``name``; an unknown name lists the known ones."""
    if name not in KINDS:
        raise ValueError(f"no conditioner kind {name!r}; registered kinds: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def kind_of_role(role: str) -> Kind:
    """The kind whose tensors arrive under the denoise input ``role``."""
    for kind in KINDS.values():
        if kind.role == role:
            return kind
    raise ValueError(f"no conditioner kind hands its tensors over as {role!r}; roles: "
                     f"{', '.join(sorted(k.role for k in KINDS.values()))}")


def starts_from_latent(roles: Iterable[str]) -> bool:
    """Whether one of the conditioners of these roles sets the starting latent (a kept source)."""
    return any("start" in kind_of_role(role).hands for role in roles)

