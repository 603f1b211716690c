"""Labelled probe sets of counting observations, fixed by a seed so that runs compare.

Two disjoint sets are drawn with fresh shapes, colours and positions: the
centroid set defines one centroid per count, the evaluation set is scored
against them (held-out nearest-centroid accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from envs.counting import COLOUR_HIGH, COLOUR_LOW, SHAPES, render_batch


@dataclass(frozen=True)
class ProbeSet:
    """Observations ``(N, 3, S, S)`` uint8 with their count, shape index and colour labels."""

    obs: np.ndarray
    counts: np.ndarray
    shapes: np.ndarray
    colours: np.ndarray

    def __len__(self) -> int:
        return len(self.counts)


def make_probe_set(per_count: int, image_size: int, max_count: int, rng: np.random.Generator) -> ProbeSet:
    """Return ``per_count`` observations of every count 0..max_count with random shapes and colours."""
    counts = np.repeat(np.arange(max_count + 1), per_count)
    shapes = rng.integers(0, len(SHAPES), size=len(counts))
    colours = rng.integers(COLOUR_LOW, COLOUR_HIGH, size=(len(counts), 3)).astype(np.uint8)
    obs = render_batch(counts, shapes, colours, rng, image_size=image_size, max_count=max_count)
    return ProbeSet(obs, counts, shapes, colours)


def make_probe_sets(per_count: int = 100, image_size: int = 64, max_count: int = 8, seed: int = 12345) -> tuple[ProbeSet, ProbeSet]:
    """Return ``(centroid_set, eval_set)``: two independent probe sets drawn from one seed."""
    rng = np.random.default_rng(seed)
    return (make_probe_set(per_count, image_size, max_count, rng),
            make_probe_set(per_count, image_size, max_count, rng))


def run_probe_sets(cfg) -> tuple[ProbeSet, ProbeSet]:
    """Return the ``(centroid_set, eval_set)`` of a run config (its training-time monitor uses these)."""
    return make_probe_sets(cfg.analysis_per_count, cfg.counting.image_size, cfg.counting.max_count, cfg.analysis_seed)


@torch.no_grad()
def embed(encode, obs: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Return ``encode`` applied to ``obs`` in batches, as a float32 numpy array ``(N, L)``."""
    out = [encode(torch.as_tensor(obs[i:i + batch_size], device=device)).float().cpu()
           for i in range(0, len(obs), batch_size)]
    return torch.cat(out).numpy()
