"""Training checkpoints: random-number states, atomic writes, and finding the latest step."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from softclip.atomic import write_atomically


def rng_state() -> dict:
    """Every generator's state as tensors and numbers, so checkpoints load with `weights_only=True`."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": [version, torch.tensor(internal, dtype=torch.int64), python_gauss],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), python_gauss))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save, atomically: a crash never leaves half a checkpoint."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def has_regions(dataset: Dataset, probe: int = 16) -> bool:
    """Whether any of the first ``probe`` samples has a detector region (a data set has them all or none)."""
    return any(dataset[index].roi_mask.any() for index in range(min(probe, len(dataset))))


def checkpoint_step(path: Path) -> int:
    """The step a ``step_00001234.pt`` checkpoint was written at, from its name."""
    return int(path.stem.split("_")[1])


def latest_checkpoint(folder: Path) -> Path | None:
    checkpoints = sorted(folder.glob("step_*.pt"), key=checkpoint_step)
    return checkpoints[-1] if checkpoints else None
