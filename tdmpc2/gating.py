"""Gradient gating: which losses may send gradient into the encoder.

One table decides it. Each row is a loss term; ``True`` lets the term's
gradient reach the encoder, ``False`` feeds the term detached latents (its
head still trains). ``consistency_target`` says whether the consistency
loss's target encodings E(o_{t+1}) are detached (TD-MPC2's stop-gradient) or
``online`` (gradient flows into both encodings, as in P-JEPA).

TD-MPC2's own row is the default in ``config.yaml``; extensions add rows for
their own loss terms (e.g. ``auxiliary``, ``decoder``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

CORE_LOSSES = ("consistency", "reward", "value", "termination", "policy")
TARGET_MODES = ("detached", "online")


@dataclass(frozen=True)
class GradientGating:
    """The resolved gating table (see module docstring)."""

    reaches_encoder: Mapping[str, bool]
    consistency_target: str = "detached"

    @classmethod
    def from_config(cls, table: Mapping[str, bool], consistency_target: str, active: Iterable[str] = (),
                    optional: Iterable[str] = ()) -> "GradientGating":
        """Return the validated table.

        Every core loss and every ``active`` extra loss needs a row; rows for
        ``optional`` (inactive extension) losses are allowed; any other row is an error.
        """
        required = (*CORE_LOSSES, *active)
        known = tuple(dict.fromkeys((*required, *optional)))
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ValueError(f"gating: unknown loss {unknown}; allowed rows: {', '.join(known)}")
        missing = [k for k in required if k not in table]
        if missing:
            raise ValueError(f"gating: no row for {missing}; every loss term needs true/false")
        for k, v in table.items():
            if not isinstance(v, bool):
                raise ValueError(f"gating.{k} must be true or false, got {v!r}")
        if table["policy"]:
            raise ValueError("gating.policy=true is not supported: the policy prior trains on detached latents")
        if consistency_target not in TARGET_MODES:
            raise ValueError(f"consistency_target must be one of {', '.join(TARGET_MODES)}, got '{consistency_target}'")
        return cls(dict(table), consistency_target)

    def gate(self, z: torch.Tensor, loss: str) -> torch.Tensor:
        """Return ``z`` if ``loss`` may reach the encoder, else ``z.detach()``."""
        return z if self.reaches_encoder[loss] else z.detach()

    @property
    def target_has_gradient(self) -> bool:
        """Return whether the consistency target E(o_{t+1}) receives gradient."""
        return self.consistency_target == "online" and self.reaches_encoder["consistency"]

    def table(self) -> str:
        """Return the table as aligned text: loss, reaches encoder, target detached."""
        rows = ["loss            reaches encoder   target detached"]
        for name, on in self.reaches_encoder.items():
            target = ("no" if self.target_has_gradient else "yes") if name == "consistency" else "-"
            rows.append(f"{name:<15} {'yes' if on else 'no':<17} {target}")
        return "\n".join(rows)
