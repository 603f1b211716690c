"""Seeding of the random number generators a run draws from."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``; returns nothing."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
