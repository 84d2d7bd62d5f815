"""Wan2.2-S2V-14B (speech-to-video) as a family, with the official defaults.

A reference image speaks a recording: the video is as long as the audio, made one clip at a time,
each clip's last frames carried into the next as motion context (``steps/pipeline_s2v``). The
repository holds everything in its root folder: the DiT (four shards behind an index, with the
``config.json`` of its transformer), umT5 and its tokenizer, the Wan2.1 VAE, and the speech
encoder, ``wav2vec2-large-xlsr-53-english/`` (a Hugging Face folder). There is no CLIP.

Defaults are the official ones (Wan2.2 ``configs/wan_s2v_14B.py`` and ``generate.py``): 40 UniPC
steps, shift 3, guidance 4.5, 16 fps, 80 frames per clip (``[video].frames = 81``: a clip of
``frames − 1`` frames, as DiffSynth counts it), the S2V negative prompt. The size is DiffSynth's
example, 832×448: both multiples of 64, as the motion tokens need.
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec

NAME = "wan2.2-s2v-14b"
REPO = "Wan-AI/Wan2.2-S2V-14B"
#: The pipeline that runs this family's steps: the clip loop and the audio track (``pipeline_s2v``).
PIPELINE = "s2v"
#: The speech encoder's folder inside the repository, and the two files of it wanflow reads.
SPEECH_FOLDER = "wav2vec2-large-xlsr-53-english"
SPEECH_FILES = (f"{SPEECH_FOLDER}/config.json", f"{SPEECH_FOLDER}/model.safetensors")
#: The official S2V negative prompt (``wan_s2v_14B.py``): the shared list with its own head
#: (blurred image, agitated emotion, fast shaking hands).
NEGATIVE = ("画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
            "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
            "三条腿，背景人很多，倒着走")
DEFAULTS = {"video.width": 832, "video.height": 448, "video.frames": 81, "video.fps": 16,
            "sampler.solver": "unipc", "sampler.steps": 40, "sampler.shift": 3.0, "sampler.cfg": 4.5,
            "prompt.negative": NEGATIVE, "inputs.audio_sample_rate": 16000, "inputs.start_from_ref": False}
#: Sizes the release names (``SIZE_CONFIGS`` for s2v-14B), (width, height); others warn.
#: What the clip loop reads, each a cached step: the speech, the reference image, the pose video
#: (optional) and the motion context before the first clip.
CONDITIONERS = (conditioner("s2v-audio"), conditioner("s2v-reference"), conditioner("s2v-pose"),
                conditioner("s2v-motion"))
SIZES = ((832, 448), (448, 832), (1024, 704), (704, 1024), (832, 480), (480, 832), (1280, 720), (720, 1280))


def components() -> dict[str, ComponentSpec]:
    """The DiT, umT5, tokenizer, Wan2.1 VAE and wav2vec2, all from the S2V repository's root."""
    src = f"modelscope:{REPO}"
    dit_files = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "config.json")
    return {"dit": ComponentSpec("dit", src, dit_files, NAME),
            "text_encoder": ComponentSpec("text_encoder", src, ("models_t5_umt5-xxl-enc-bf16.pth",), "umt5-xxl"),
            "tokenizer": ComponentSpec("tokenizer", src, ("google/umt5-xxl/*",), "umt5-xxl"),
            "vae": ComponentSpec("vae", src, ("Wan2.1_VAE.pth",), "wan2.1-vae"),
            "speech_encoder": ComponentSpec("speech_encoder", src, SPEECH_FILES, "wav2vec2-large-xlsr-53")}


def family() -> FamilySpec:
    """wan2.2-s2v-14b: the reference image (``[inputs].image``) and the speech (``[inputs].audio``)
    are required; a pose video and 73 frames of motion context are optional, as are the release's
    ``start_from_ref`` and ``num_clip``."""
    return FamilySpec(
        NAME, f"Wan2.2 S2V-14B: a reference image speaks a recording, the video as long as the audio ({REPO})",
        components(), DEFAULTS,
        frozenset({"image", "audio", "audio_sample_rate", "s2v_pose_video", "motion_video", "audio_embeds",
                   "start_from_ref", "num_clip"}),
        frozenset({"image", "audio"}), sizes=SIZES, solvers=("unipc", "euler", "dpm++"), pipeline=PIPELINE,
        conditioners=CONDITIONERS)
