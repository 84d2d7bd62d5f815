"""Families declare their conditioners as data; every declared kind is registered and implemented,
and the sampling code names neither a family nor a conditioning mode."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from wanflow.conditioners import KINDS, conditioner, kind_of_role
from wanflow.families.spec import KNOWN_INPUTS
from wanflow.plugins import get_registry
from wanflow.steps.cond_kinds import IMPLEMENTATIONS

STEPS = Path(__file__).resolve().parents[2] / "wanflow" / "steps"

BASE = {
    "wan2.1-t2v-1.3b": ["source-latent"], "wan2.1-t2v-14b": ["source-latent"],
    "wan2.1-i2v-14b-480p": ["clip-tokens", "image-channels", "source-latent"],
    "wan2.1-i2v-14b-720p": ["clip-tokens", "image-channels", "source-latent"],
    "wan2.1-flf2v-14b-720p": ["clip-tokens", "image-channels", "source-latent"],
    "wan2.2-t2v-a14b": ["source-latent"], "wan2.2-i2v-a14b": ["image-channels", "source-latent"],
    "wan2.2-ti2v-5b": ["first-frame-latent", "source-latent"], "wanflow-tiny": ["source-latent"],
}


def test_the_base_families_declare_their_conditioners():
    registry = get_registry()
    declared = {name: [c.kind for c in registry.family(name).conditioners] for name in BASE}
    assert declared == BASE and len(declared) == 9


def test_every_kind_is_implemented_once_with_a_role_of_its_own():
    assert sorted(IMPLEMENTATIONS) == sorted(KINDS) and len(KINDS) == 23
    roles = [k.role for k in KINDS.values()]
    assert len(set(roles)) == len(roles) and {"pos", "neg"}.isdisjoint(roles)
    assert all(kind_of_role(k.role) is k for k in KINDS.values())
    assert all(set(k.reads) <= set(KNOWN_INPUTS) for k in KINDS.values())


def test_every_registered_family_reads_what_it_requires_through_its_conditioners():
    registry = get_registry()
    checked = 0
    for name in registry.family_names():
        family = registry.family(name)
        reads = {i for c in family.conditioners for i in c.spec.reads}
        assert set(family.required_inputs) <= reads, name
        assert len({c.role for c in family.conditioners}) == len(family.conditioners), name
        checked += 1
    assert checked >= 9


def test_a_declaration_is_checked_and_canonical():
    assert conditioner("image-channels", without_image="zeros") == conditioner("image-channels",
                                                                                without_image="zeros")
    assert conditioner("clip-tokens").option("images") == "given"
    assert conditioner("clip-tokens", without_image="zeros", images="first").options == (
        ("images", "first"), ("without_image", "zeros"))
    with pytest.raises(ValueError, match="no conditioner kind 'vace'; registered kinds: animate-background, animate-face"):
        conditioner("vace")
    with pytest.raises(ValueError, match=r"fill = 'black'; choose one of \['zeros', 'grey'\]"):
        conditioner("start-latent", fill="black")


def string_literals(path: Path) -> list[str]:
    """Every string constant of a module except its docstrings (what code could branch on)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_sampling_code_names_no_family_and_no_conditioning_mode():
    literals = string_literals(STEPS / "denoise.py")
    assert not {"x0", "z0", "y", "clip"} & set(literals), literals
    assert len((STEPS / "denoise.py").read_text().splitlines()) < 356
    families = get_registry().family_names()
    modules = [STEPS / m for m in ("denoise.py", "pipeline.py", "dit_passes.py", "conditioning.py", "image.py")]
    modules += sorted(STEPS.glob("cond_*.py"))
    assert len(modules) == 22
    for module in modules:
        named = [s for s in string_literals(module) for f in families if f in s]
        assert not named, f"{module.name} names a family: {named}"
