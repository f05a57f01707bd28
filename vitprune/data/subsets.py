"""Seeded class-balanced subsets (never "the first 10 %")."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vitprune.data.format import class_names, labels_of, short_list
from vitprune.errors import UserError


def balanced_indices(labels: Sequence[int] | np.ndarray, per_class: int | None = None,
                     fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """Seeded class-balanced selection, returned in the original order.

    per_class=n: exactly n of every class (UserError if a class has fewer).
    fraction=f: round(f * n_c) of every class c (the same fraction of each class, so a
    balanced source gives equal counts and an imbalanced one keeps its proportions).
    """
    labels = np.asarray(labels)
    if per_class is None and fraction is None:
        return np.arange(len(labels))
    if per_class is not None and fraction is not None:
        raise UserError("give per_class or fraction for a subset, not both")
    if per_class is not None and per_class < 1:
        raise UserError(f"per_class must be >= 1, got {per_class}")
    if fraction is not None and not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(members))))
        if k > len(members):
            raise UserError(f"class {int(label)} has only {len(members)} examples, {k} per class requested; "
                            "lower the per-class count")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def balanced_subset(split, per_class: int | None = None, fraction: float | None = None, seed: int = 0):
    """A class-balanced, seeded subset of a `datasets.Dataset` (never "the first 10 %").
    Classes absent from the split are an error when per_class is given."""
    if per_class is not None:
        present = set(np.unique(labels_of(split)).tolist())
        names = class_names(split)
        absent = [names[i] for i in range(len(names)) if i not in present]
        if absent:
            raise UserError(f"classes {short_list(absent)} have no examples; cannot take {per_class} per class")
    if per_class is None and fraction is None:
        return split
    return split.select(balanced_indices(labels_of(split), per_class, fraction, seed))
