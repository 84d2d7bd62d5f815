"""A deterministic fake pipeline (bytes only, no torch) and a fake resolved recipe."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import tomlkit

from wanflow.engine import StepSpec, WeightFile


def h(*parts: Any) -> bytes:
    """A stand-in for real numerics: deterministic bytes from the inputs."""
    m = hashlib.sha256()
    for p in parts:
        m.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return m.digest()


def _count(kind: str) -> None:
    """Record that a step really ran (counted through files, across processes)."""
    d = os.environ.get("FAKE_COUNT_DIR")
    if d:
        with open(Path(d) / f"{kind}.count", "a") as f:
            f.write(f"{os.getpid()}\n")


@attrs.frozen
class EncodeText:
    kind: str = "encode-text"
    version: int = 1
    reads: tuple[str, ...] = ("prompt.text", "text_encoder.dtype")
    output: str = "bytes"

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        prompt = next(v for k, v in ctx.params.items() if k.startswith("prompt."))
        words = " ".join(prompt.split())  # whitespace never changes the embedding
        return h(words, ctx.params["text_encoder.dtype"], ctx.weight("t5").read_bytes())


@attrs.frozen
class EncodeImage:
    kind: str = "encode-conditioning"
    version: int = 1
    reads: tuple[str, ...] = ("video.height", "video.width")
    output: str = "bytes"

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        return h(ctx.file("image").read_bytes(), dict(ctx.params))


@attrs.frozen
class Denoise:
    """A long step: one hash per sampler step, checkpointed every ``every`` steps."""

    kind: str = "denoise"
    version: int = 1
    reads: tuple[str, ...] = ("sampler.*", "video.*", "dit.dtype", "dit.fp8",
                              "dit.attention")
    output: str = "bytes"
    every: int = 1

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        total = ctx.params["sampler.steps"]
        resumed = ctx.load_partial()
        done, state = resumed if resumed else (0, h(ctx.input("pos"), ctx.input("neg"),
                                                    ctx.input("cond"), dict(ctx.params),
                                                    ctx.weight("dit").read_bytes()))
        _log("denoise.start", done)
        bar = ctx.progress(total, unit="step")
        for i in range(done, total):
            state = h(state, i)
            bar.update(1)
            if (i + 1) % self.every == 0:
                ctx.save_partial(i + 1, state)
            _maybe_stop(i + 1)
        bar.close()
        return state


def _log(what: str, n: int) -> None:
    d = os.environ.get("FAKE_COUNT_DIR")
    if d:
        with open(Path(d) / "log.txt", "a") as f:
            f.write(f"{what} {n}\n")


def _maybe_stop(done: int) -> None:
    """Hang (to be killed) once ``done`` steps are checkpointed; or slow each step down."""
    if os.environ.get("FAKE_KILL_AT") == str(done):
        Path(os.environ["FAKE_MARKER"]).write_text("ready")
        time.sleep(600)
    time.sleep(float(os.environ.get("FAKE_STEP_SLEEP", "0")))


@attrs.frozen
class Decode:
    kind: str = "decode"
    version: int = 1
    reads: tuple[str, ...] = ("vae.*",)
    output: str = "bytes"

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        return h(ctx.input("latents"), dict(ctx.params), ctx.weight("vae").read_bytes())


@attrs.frozen
class Save:
    kind: str = "save"
    version: int = 1
    reads: tuple[str, ...] = ("video.fps", "output.format")
    output: str = "bytes"

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        return b"FAKEVIDEO" + h(ctx.input("frames"), dict(ctx.params)) * 4


@attrs.define
class FakePipeline:
    """encode-text (positive, negative) → encode-conditioning → denoise → decode → save."""

    weights: Mapping[str, Path]
    denoise: Denoise = Denoise()
    plugin: str = "wanflow@0.1.0"

    def steps(self, r: Any) -> list[StepSpec]:
        w = {k: WeightFile(p, source=f"local:{k}") for k, p in self.weights.items()}
        return [
            StepSpec("encode-text:positive", EncodeText(), weights={"t5": w["t5"]},
                     reads=("prompt.text", "text_encoder.dtype"), plugin=self.plugin),
            StepSpec("encode-text:negative", EncodeText(), weights={"t5": w["t5"]},
                     reads=("prompt.negative", "text_encoder.dtype"), plugin=self.plugin),
            StepSpec("encode-conditioning", EncodeImage(), files={"image": r.values["inputs.image"]},
                     plugin=self.plugin),
            StepSpec("denoise", self.denoise, weights={"dit": w["dit"]}, plugin=self.plugin,
                     inputs={"pos": "encode-text:positive", "neg": "encode-text:negative",
                             "cond": "encode-conditioning"}),
            StepSpec("decode", Decode(), inputs={"latents": "denoise"}, weights={"vae": w["vae"]},
                     plugin=self.plugin),
            StepSpec("save", Save(), inputs={"frames": "decode"}, archive_as="video.bin",
                     plugin=self.plugin),
        ]

    device: str = "cpu"

    def describe(self, r: Any) -> dict[str, str]:
        return {"device": self.device, "cuda": "none"}


BASE_VALUES: dict[str, Any] = {
    "prompt.text": "a puppy on grass", "prompt.negative": "blurry",
    "video.height": 480, "video.width": 832, "video.frames": 81, "video.fps": 16,
    "sampler.solver": "euler", "sampler.steps": 6, "sampler.shift": 5.0, "sampler.cfg": 5.0,
    "sampler.seed": 0, "sampler.noise_device": "cpu", "sampler.teacache_threshold": 0.0,
    "dit.dtype": "bf16", "text_encoder.dtype": "bf16", "dit.fp8": False,
    "dit.attention": "sdpa", "vae.tiled": True, "vae.tile_size": [30, 52],
    "vae.tile_stride": [15, 26], "output.format": "mp4",
    "memory.policy": "auto", "memory.limit_gb": 8, "progress.bar": True, "log.format": "text",
}


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for k, v in values.items():
        *heads, tail = k.split(".")
        cur = doc
        for part in heads:
            cur = cur.setdefault(part, {})
        if v is not None:
            cur[tail] = v
    return doc


@attrs.frozen
class FakeResolved:
    """Duck-types ``wanflow.recipe.ResolvedRecipe`` for the engine."""

    values: Mapping[str, Any]
    name: str = "fake"
    model: str = "fake-family"
    path: Path = Path("fake.toml")
    job_label: str = ""
    sweep: Mapping[str, list[Any]] = attrs.field(factory=dict)

    @property
    def text(self) -> str:
        return tomlkit.dumps({"name": self.name, "model": self.model, **_nest(self.values)})

    def canonical_toml(self) -> str:
        return self.text

    def input_files(self) -> dict[str, Path]:
        return {k: Path(v) for k, v in self.values.items() if k.startswith("inputs.") and v}

    def sweep_jobs(self) -> list[FakeResolved]:
        if not self.sweep:
            return [self]
        jobs = [{}]
        for k, options in self.sweep.items():
            jobs = [{**j, k: o} for j in jobs for o in options]
        return [FakeResolved({**self.values, **j}, self.name, self.model, self.path,
                             ",".join(f"{k}={v}" for k, v in j.items())) for j in jobs]


def load_text(text: str, path: Path) -> FakeResolved:
    """Parse a fake resolved.toml back (flatten the nested tables)."""
    doc = tomlkit.parse(text).unwrap()
    flat: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk({k: v for k, v in doc.items() if k not in ("name", "model")}, "")
    for k, v in flat.items():  # as the real loader does: input paths relative to the recipe's folder
        if k.startswith("inputs.") and isinstance(v, str) and v and not Path(v).is_absolute():
            flat[k] = str(Path(path).parent / v)
    return FakeResolved(flat, doc["name"], doc["model"], path)


def make_world(root: Path, image: bytes = b"IMG0") -> tuple[FakeResolved, FakePipeline]:
    """Weight files, an input image, a resolved recipe and the pipeline, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name in ("t5", "dit", "vae"):
        weights[name] = root / f"{name}.safetensors"
        if not weights[name].exists():
            weights[name].write_bytes(name.encode() * 64)
    img = root / "image.png"
    if not img.exists():
        img.write_bytes(image)
    return FakeResolved({**BASE_VALUES, "inputs.image": str(img)}), FakePipeline(weights)


@attrs.frozen
class Mix:
    """A generic step: deterministic bytes from its params and its inputs."""

    kind: str
    reads: tuple[str, ...]
    roles: tuple[str, ...] = ()
    version: int = 1
    output: str = "bytes"

    def run(self, ctx: Any) -> bytes:
        _count(self.kind)
        return h(dict(ctx.params), *[ctx.input(r) for r in self.roles])


@attrs.frozen
class ValuesPipeline:
    """Steps over the real recipe schema's keys (for tests with the real recipe loader)."""

    weights: Mapping[str, Path]

    def steps(self, r: Any) -> list[StepSpec]:
        dit = {"dit": WeightFile(self.weights["dit"])}
        return [
            StepSpec("encode-text:positive", Mix("encode-text", ("prompt.text",))),
            StepSpec("encode-text:negative", Mix("encode-text", ("prompt.negative",))),
            StepSpec("denoise", Mix("denoise", ("sampler.*", "video.*", "runtime.*", "memory.*"),
                                    ("pos", "neg")), weights=dit,
                     inputs={"pos": "encode-text:positive", "neg": "encode-text:negative"}),
            StepSpec("decode", Mix("decode", ("vae.*",), ("x",)), inputs={"x": "denoise"}),
            StepSpec("save", Mix("save", ("output.*", "video.fps"), ("x",)), inputs={"x": "decode"},
                     archive_as="video.mp4"),
        ]
