"""`MARKET_BUDGET_SCALE`: the factor that cuts every run's budget (steps, episodes, and the
Two Rooms options' training), read in one place. The README's commands run as a test with
it (tests/test_readme.py); `simulation.config` records it in a run's simulation.toml."""

from __future__ import annotations

import os

BUDGET_SCALE = "MARKET_BUDGET_SCALE"
"""The environment variable whose factor cuts every run's steps and episodes."""


def budget_scale() -> float | None:
    """The factor of `MARKET_BUDGET_SCALE`, or None when it is unset; a one-line error when
    it is not a positive number."""
    raw = os.environ.get(BUDGET_SCALE, "").strip()
    if not raw:
        return None
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale < float("inf"):
        raise ValueError(f"{BUDGET_SCALE}={raw!r}: expected a positive number such as 0.001")
    return scale


def scaled(budget: int, scale: float | None) -> int:
    """`budget` cut by `scale` (at least 1), or as it is when there is no scale."""
    return budget if scale is None else max(1, round(budget * scale))
