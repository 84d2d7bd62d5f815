"""Prompts for shape clips, worded several ways, and the reverse: the combination a prompt names.

Varied wording (synonyms and sentence templates) teaches the text side that "ball" and "circle",
or "going to the left" and "moving left", mean the same thing. ``parse`` reads any prompt built
from these words back into its (colour, shape, motion), so an evaluation can be given prompts.
"""

from __future__ import annotations

import re

import numpy as np

from .vocabulary import COLOURS, Combo

SHAPE_WORDS = {
    "ball": ("ball", "circle", "disc", "round ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
}
MOTION_PHRASES = {
    "left": ("moving left", "going to the left", "sliding to the left", "heading left"),
    "right": ("moving right", "going to the right", "sliding to the right", "heading right"),
    "up": ("moving up", "going upward", "rising", "floating up"),
    "down": ("moving down", "going downward", "falling", "dropping down"),
}
TEMPLATES = (
    "a {colour} {shape} {motion}",
    "{colour} {shape} {motion}",
    "a {colour} {shape} {motion} over a plain background",
    "a video of a {colour} {shape} {motion}",
    "one {colour} {shape}, {motion}",
)


def caption(rng: np.random.Generator, colour: str, shape: str, motion: str) -> str:
    """A prompt for the combination, with template and synonyms drawn from ``rng``."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    shape_word = SHAPE_WORDS[shape][rng.integers(len(SHAPE_WORDS[shape]))]
    phrase = MOTION_PHRASES[motion][rng.integers(len(MOTION_PHRASES[motion]))]
    return template.format(colour=colour, shape=shape_word, motion=phrase)


def canonical(colour: str, shape: str, motion: str) -> str:
    """The plainest wording: "a red ball moving left"."""
    return TEMPLATES[0].format(colour=colour, shape=shape, motion=MOTION_PHRASES[motion][0])


def parse(prompt: str) -> Combo:
    """The (colour, shape, motion) a prompt names; ValueError unless it names exactly one of each."""
    text = " " + re.sub(r"[^a-z]+", " ", prompt.lower()) + " "
    colour = _one(text, {c: (c,) for c in COLOURS}, "colour", prompt)
    shape = _one(text, SHAPE_WORDS, "shape", prompt)
    motion = _one(text, MOTION_PHRASES, "motion", prompt)
    return colour, shape, motion


def _one(text: str, words: dict[str, tuple[str, ...]], what: str, prompt: str) -> str:
    found = {name for name, synonyms in words.items() if any(f" {w} " in text for w in synonyms)}
    if len(found) != 1:
        names = ", ".join(sorted(found)) or "none"
        raise ValueError(f"prompt {prompt!r} names {names} as its {what}; it must name exactly one of "
                         f"{', '.join(words)}")
    return found.pop()
