"""What a family declares: each conditioner as a registered kind with its options.

``conditioner("image-channels", without_image="zeros")`` is checked against the kind when it is
built, so a family with an unknown kind, option or value fails where it is written. The order
of a family's conditioners is the order their input channels join the noisy latent.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.conditioners.kinds import Kind, kind_named


def _sorted_options(options: Any) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(dict(options).items()))


@attrs.frozen
class Conditioner:
    """One declared conditioner: a registered kind and the options that differ from its defaults."""

    kind: str
    options: tuple[tuple[str, object], ...] = attrs.field(default=(), converter=_sorted_options)

    def __attrs_post_init__(self) -> None:
        kind = kind_named(self.kind)
        for name, value in self.options:
            option = kind.option(name)
            if value not in option.choices:
                raise ValueError(f"conditioner {self.kind!r}: {name} = {value!r}; choose one of "
                                 f"{list(option.choices)} ({option.why})")

    @property
    def spec(self) -> Kind:
        return kind_named(self.kind)

    @property
    def role(self) -> str:
        """The denoise input role its tensors arrive under."""
        return self.spec.role

    def option(self, name: str) -> Any:
        """The declared value of ``name``, else the kind's default."""
        declared = dict(self.options)
        return declared[name] if name in declared else self.spec.option(name).default


def conditioner(kind: str, **options: object) -> Conditioner:
    """A declaration, checked against its kind (an unknown kind, option or value: ValueError)."""
    return Conditioner(kind, tuple(options.items()))
