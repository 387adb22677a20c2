"""Money is an integer count of fixed units: 1 credit = 10**9 units (a nano-credit).

Floats (a bid drawn by a policy, a task's reward) are quantised once, here, when an event is
made; every later number derives from the integer, so conservation is exact equality. Each
rule comes in a scalar form (one auction of the episode kernel) and an array form (the
array kernels and the audit); `tests/test_units.py` holds them to the same ints.
"""

import numpy as np
from numpy.typing import ArrayLike, NDArray

UNIT: int = 10**9
"""Units in one credit."""


def to_units(credit: float) -> int:
    """Quantise a credit amount to the nearest whole unit (ties to even)."""
    return round(credit * UNIT)


def to_units_array(credit: ArrayLike) -> NDArray[np.int64]:
    """`to_units` of every element."""
    return np.rint(np.asarray(credit, dtype=np.float64) * UNIT).astype(np.int64)


def to_credit(units: int) -> float:
    """A unit count as credit, for display and learning signals only."""
    return units / UNIT


NOT_A_NUMBER = "a bid is not a number: the bidders' policy diverged"
"""Why a NaN bid is refused (it has no place in [0, 1] credit)."""


def quantise_bids(bids: list[float]) -> list[int]:
    """Bids drawn as credit, clipped to [0, 1] credit and quantised to whole units (ties to
    even); a NaN bid raises ValueError(`NOT_A_NUMBER`).

    Speed: a comparison before the product, not min/max after it, is 2.5 times faster on a
    row of five bids (0.6 against 1.6 us), and the NumPy form costs several us a call.
    """
    try:
        return [UNIT if b >= 1.0 else 0 if b <= 0.0 else round(b * UNIT) for b in bids]
    except ValueError:  # round(nan): the only bid that fails every comparison
        raise ValueError(NOT_A_NUMBER) from None


def quantise_bid_array(bids: ArrayLike) -> NDArray[np.int64]:
    """`quantise_bids` of every row at once."""
    credit = np.asarray(bids, dtype=np.float64)
    if np.isnan(credit).any():
        raise ValueError(NOT_A_NUMBER)
    return np.clip(np.rint(credit * UNIT), 0, UNIT).astype(np.int64)
