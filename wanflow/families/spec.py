"""What a recipe needs to know about a model family, and how validation asks for it.

A family is data (components, official defaults, accepted inputs, sizes, solvers, conditioners),
never a branch in a pipeline. Families are registered through plugin hooks; validation only sees the
``FamilyLookup`` protocol, so this module stays free of torch and of the plugin machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from wanflow.conditioners import Conditioner

#: Every conditioning input a recipe can name in ``[inputs]``; a family accepts a subset.
KNOWN_INPUTS = (
    "image", "end_image", "video", "control_video", "reference_image", "mask",
    "audio", "pose_video", "face_video", "camera", "vace", "motion_bucket",
    "vap_video", "vap_prompt", "negative_vap_prompt",
    "s2v_pose_video", "motion_video", "audio_sample_rate", "audio_embeds",
    "start_from_ref", "num_clip",
    "longcat_video",
    "animate_mode", "background_video", "overlap_frames", "relighting_lora",
)


@attrs.frozen
class ComponentSpec:
    """One model component of a family: where its files come from and what they are."""

    kind: str  # "dit" | "text_encoder" | "image_encoder" | "vae" | "tokenizer"
    source: str  # "modelscope:ORG/REPO" or a path relative to the models root
    files: tuple[str, ...]  # glob patterns inside the source
    architecture: str = ""  # e.g. "wan2.1-t2v-1.3b", "wan2.1-vae"; checked against the file signature


@attrs.frozen
class FamilySpec:
    """A registered model preset: components, official defaults and what it accepts."""

    name: str
    description: str
    components: Mapping[str, ComponentSpec]
    defaults: Mapping[str, object]  # dotted recipe key -> official value ("sampler.steps": 50)
    accepted_inputs: frozenset[str] = frozenset()
    required_inputs: frozenset[str] = frozenset()
    spatial_factor: int = 16  # VAE stride × DiT patch: 16 for the Wan2.1 VAE, 32 for Wan2.2's
    #: The solvers this family is limited to; () = every registered solver, plugins' included.
    solvers: tuple[str, ...] = ()
    #: Per solver, official values that replace ``defaults`` when a recipe picks that solver and
    #: leaves the key unset (a distilled schedule's step count and guidance).
    solver_defaults: Mapping[str, Mapping[str, object]] = attrs.field(factory=dict)
    sizes: tuple[tuple[int, int], ...] = ()  # officially supported (width, height); others warn
    experts: tuple[str, ...] = ()  # A14B: ("dit_high_noise", "dit_low_noise"); () for one DiT
    pipeline: str = "wan"  # the name of the pipeline that builds this family's steps
    #: How the family's inputs reach its DiT, in order (channels join the latent in this order);
    #: each a registered kind (``wanflow.conditioners``). () = text only.
    conditioners: tuple[Conditioner, ...] = ()
    #: How a fully fine-tuned DiT is exported: "official" (the trained weights under the official
    #: names) or "video-as-prompt-release" (the trained reference stream merged over the base's
    #: files, in the release's layout).
    full_export: str = "official"
    #: Components besides the DiTs that full fine-tuning trains alone, the DiT and encoders frozen,
    #: as the release's authors train them (speed control: its ``motion_controller``, DiffSynth's
    #: ``--trainable_models motion_controller``); ``[train].components`` may name one of them.
    trainable_parts: tuple[str, ...] = ()
    #: Stages after the main denoise that run the DiT again with LoRAs of their own, a ``[[lora]]``
    #: naming the stage as its ``target`` (LongCat-Video: ("refine",), its 720p refinement).
    lora_stages: tuple[str, ...] = ()


class FamilyLookup(Protocol):
    """The part of the plugin registry that recipe validation consults."""

    def family(self, name: str) -> FamilySpec | None: ...

    def family_names(self) -> list[str]: ...

    def solver_names(self) -> list[str]: ...


@attrs.frozen
class StaticFamilies:
    """A fixed set of families; handy for tests and for tools that bypass plugins."""

    families: Mapping[str, FamilySpec]
    solvers: tuple[str, ...] = ("euler", "unipc", "dpm++")

    def family(self, name: str) -> FamilySpec | None:
        return self.families.get(name)

    def family_names(self) -> list[str]:
        return sorted(self.families)

    def solver_names(self) -> list[str]:
        return list(self.solvers)
