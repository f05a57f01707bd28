"""The keep schedule of token pruning as plain numbers: cumulative keep ratios per stage, the
patch tokens each stage keeps, and the JSON-able config a patched model records.

DynamicViT (`dynamicvit`) and the training-free comparator (`training_free`) prune at the
same locations with the same counts; both read them here, so the comparator needs nothing
of DynamicViT's predictors or forwards. Conventions are `dynamicvit`'s: ratios are
fractions of the patch tokens (CLS excluded), counts are floor(N * ratio).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping, Sequence

import torch.nn as nn

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.methods.method import Flag, comma_list
from vitprune.methods.vit_ops import check_locations

SCHEDULES = param_rules.CHOICES["schedule"]
DEFAULT_LOCATIONS = (3, 6, 9)
LINEAR_STEP = 0.2  # the study's text: keep b, b - 0.2, b - 0.4 at blocks 3, 6, 9


def schedule_ratios(base_rate: float | None, schedule: str = "geometric",
                    keep_ratios: Sequence[float] | None = None,
                    num_stages: int = len(DEFAULT_LOCATIONS)) -> list[float]:
    """Cumulative keep ratio of patch tokens after each pruning stage.

    geometric: rho, rho^2, rho^3, ... (official main_dynamic_vit.py: KEEP_RATE = [b, b**2, b**3]);
    linear:    b, b - 0.2, b - 0.4, ... (what the study's section 4.1 describes);
    explicit:  `keep_ratios` as given (one per stage).
    Ratios below 0 (linear at small b) are returned as they are; `keep_counts` judges them.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown token-pruning schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if num_stages < 1:
        raise UserError("token pruning needs at least one pruning location; pass e.g. locations=(3, 6, 9)")
    if schedule == "explicit":
        if keep_ratios is None:
            raise UserError("schedule 'explicit' needs keep_ratios, one per pruning location (e.g. 0.7,0.5,0.3)")
        ratios = [float(r) for r in keep_ratios]
        if len(ratios) != num_stages:
            raise UserError(f"keep_ratios has {len(ratios)} values but there are {num_stages} pruning "
                            f"locations; give one ratio per location")
    else:
        if keep_ratios is not None:
            raise UserError(f"keep_ratios is only used by schedule 'explicit', not {schedule!r}; "
                            f"drop it or pass schedule='explicit'")
        if base_rate is None or isinstance(base_rate, bool) or not isinstance(base_rate, (int, float)):
            raise UserError(f"base_rate must be a number in (0, 1], got {base_rate!r}")
        if not 0.0 < base_rate <= 1.0:
            raise UserError(f"base_rate must be in (0, 1], got {base_rate}")
        if schedule == "geometric":
            ratios = [float(base_rate) ** (s + 1) for s in range(num_stages)]
        else:
            ratios = [float(base_rate) - LINEAR_STEP * s for s in range(num_stages)]
    for s, r in enumerate(ratios):
        if not r <= 1.0 or math.isnan(r):
            raise UserError(f"keep ratio {r} at stage {s} is above 1; ratios are fractions of the patch tokens")
    for s in range(1, len(ratios)):
        if ratios[s] > ratios[s - 1] + 1e-12:
            raise UserError(f"keep ratios must not increase from stage to stage (a dropped token never "
                            f"comes back), got {ratios}")
    return [round(r, 12) for r in ratios]


def _floor_count(num_patches: int, ratio: float) -> int:
    """floor(N * ratio) on the ratio rounded to 12 decimals (exact rational arithmetic)."""
    if ratio <= 0:
        return 0
    return math.floor(Fraction(repr(round(ratio, 12))) * num_patches)


def keep_counts(num_patches: int, base_rate: float | None = None, schedule: str = "geometric",
                keep_ratios: Sequence[float] | None = None,
                locations: Sequence[int] = DEFAULT_LOCATIONS,
                allow_empty_stage: bool = False) -> list[int]:
    """Patch tokens (CLS excluded) kept after each pruning stage, out of `num_patches`.

    A stage that keeps no patch token is an error unless `allow_empty_stage` (which reproduces
    the study's degenerate DyViT/0.4 row: linear schedule, block 9 sees only CLS).
    """
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise UserError(f"num_patches must be a positive int, got {num_patches!r}")
    locations = check_locations(locations)
    ratios = schedule_ratios(base_rate, schedule, keep_ratios, len(locations))
    counts = [_floor_count(num_patches, r) for r in ratios]
    for s, (count, ratio) in enumerate(zip(counts, ratios)):
        if count == 0 and not allow_empty_stage:
            raise UserError(
                f"stage {s} (before block {locations[s]}) keeps 0 of {num_patches} patch tokens: "
                f"{schedule} schedule gives keep ratio {ratio:g} and floor({num_patches} x {ratio:g}) = 0; "
                f"raise base_rate, use schedule='geometric', or set allow_empty_stage (--allow-empty-stage) to run "
                f"those blocks on CLS alone (the study's degenerate row)")
    return counts


def schedule_config(base_rate, schedule, keep_ratios, locations, allow_empty_stage) -> dict[str, Any]:
    """The keep schedule as plain JSON-able values: what a patched model records and a
    checkpoint stores, so loading can re-apply it."""
    return {
        "base_rate": None if base_rate is None else float(base_rate),
        "schedule": schedule,
        "keep_ratios": None if keep_ratios is None else [float(r) for r in keep_ratios],
        "locations": list(locations),
        "allow_empty_stage": bool(allow_empty_stage),
    }


def recorded_keep_counts(model: nn.Module, cfg: dict[str, Any], num_patches: int | None = None) -> list[int]:
    """`keep_counts` of a recorded config (`schedule_config`'s dict) for `num_patches` patch
    tokens, by default the model's own (`model.patch_embed.num_patches`)."""
    n = int(model.patch_embed.num_patches) if num_patches is None else int(num_patches)
    return keep_counts(n, cfg["base_rate"], cfg["schedule"], cfg["keep_ratios"], cfg["locations"],
                       cfg["allow_empty_stage"])


# ---------------------------------------------------------------- command-line flags (shared)

SCHEDULE_FLAGS = (
    Flag("--base-rate", {"type": float, "help": "keep-ratio base rho, e.g. 0.7"}),
    Flag("--schedule", {"choices": SCHEDULES, "help": "keep-ratio schedule (default geometric)"}),
    Flag("--keep-ratios", {"help": "explicit keep ratios, comma-separated"}),
    Flag("--locations", {"help": "blocks before which tokens are pruned (default 3,6,9)"}),
    Flag("--allow-empty-stage", {"action": "store_true",
                                 "help": "allow a stage that keeps no patch token (the study's degenerate row)"}),
)
"""The keep schedule's flags: DynamicViT and the training-free comparator both declare them."""


def options_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """`schedule_config`'s keywords from a notebook's parameters (`base_rate`, `schedule`,
    `keep_ratios`, `locations`, `allow_empty_stage`; absent ones take the defaults)."""
    options = {"base_rate": params["base_rate"], "schedule": params.get("schedule", "geometric"),
               "keep_ratios": params.get("keep_ratios") or None,
               "allow_empty_stage": bool(params.get("allow_empty_stage", False))}
    if params.get("locations") is not None:
        options["locations"] = list(params["locations"])
    return options


def options_from_flags(values: dict[str, Any]) -> dict[str, Any] | None:
    """`schedule_config`'s keywords from the `SCHEDULE_FLAGS` values (None: no schedule given)."""
    base_rate, keep_ratios = values.get("base_rate"), values.get("keep_ratios")
    if base_rate is None and keep_ratios is None:
        if any(values.get(k) is not None and values.get(k) is not False
               for k in ("schedule", "locations", "allow_empty_stage")):
            raise UserError("--schedule/--locations/--allow-empty-stage need --base-rate R "
                            "(or --keep-ratios for --schedule explicit)")
        return None
    if base_rate is not None and not 0.0 < base_rate <= 1.0:
        raise UserError(f"--base-rate must be in (0, 1], got {base_rate}")
    options = {"base_rate": base_rate,
               "schedule": values.get("schedule") or ("explicit" if base_rate is None else "geometric"),
               "keep_ratios": comma_list(keep_ratios, "--keep-ratios", float, "numbers like 0.7,0.49,0.34"),
               "allow_empty_stage": bool(values.get("allow_empty_stage"))}
    locations = comma_list(values.get("locations"), "--locations", int, "block indices like 3,6,9")
    if locations is not None:
        options["locations"] = locations
    return options
