"""What a comparison compares: a variant is a gradient-gating preset with its auxiliary target.

Written ``PRESET`` or ``PRESET:AUX`` (``pjepa``, ``pjepa:random``, ``stock``).
Without ``:AUX`` the preset's own target applies: ``reward`` for the P-JEPA
presets, ``none`` for stock (``pjepa_ext.presets.resolve_aux``). A variant
is labelled by its spec with the default target left out, so ``pjepa`` and
``pjepa:reward`` are the same variant, labelled ``pjepa``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pjepa_ext.aux_targets import AUX_TARGETS
from pjepa_ext.presets import VARIANTS, resolve_aux


@dataclass(frozen=True)
class Variant:
    """A gating preset (``pjepa_ext/conf/variant``) and the auxiliary target it regresses."""

    preset: str
    aux: str

    @property
    def label(self) -> str:
        """Return the name in tables and figures: ``preset``, or ``preset:aux`` when the target is not the default."""
        return self.preset if self.aux == resolve_aux("auto", self.preset) else f"{self.preset}:{self.aux}"

    @property
    def dirname(self) -> str:
        """Return the label as a directory name (``pjepa-random``)."""
        return self.label.replace(":", "-")

    def overrides(self) -> list[str]:
        """Return the train.py overrides that select this variant."""
        return [f"variant={self.preset}", f"aux={self.aux}"]


def parse_variant(spec: str) -> Variant:
    """Return the :class:`Variant` written ``PRESET`` or ``PRESET:AUX``; a bad name raises ValueError naming the allowed ones."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a variant is written PRESET or PRESET:AUX, got {spec!r}")
    preset, _, aux = spec.strip().partition(":")
    if preset not in VARIANTS:
        raise ValueError(f"unknown variant preset {preset!r} in {spec!r}; allowed presets: {', '.join(VARIANTS)}")
    aux = aux or "auto"
    if aux != "auto" and aux not in AUX_TARGETS:
        raise ValueError(f"unknown auxiliary target {aux!r} in {spec!r}; allowed targets: {', '.join(AUX_TARGETS)}")
    return Variant(preset, resolve_aux(aux, preset))


def variant_of_run(preset: str, aux: str) -> Variant:
    """Return the variant a run's resolved config (``variant``, ``aux``) ran."""
    return Variant(str(preset), str(aux))
