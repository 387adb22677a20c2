"""Money is an integer count of fixed units: 1 credit = 10**9 units (a nano-credit).

Floats (a bid drawn by a policy, a task's reward) are quantised once, here, when an event is
made; every later number derives from the integer, so conservation is exact equality.
"""

UNIT: int = 10**9
"""Units in one credit."""


def to_units(credit: float) -> int:
    """Quantise a credit amount to the nearest whole unit (ties to even)."""
    return round(credit * UNIT)


def to_credit(units: int) -> float:
    """A unit count as credit, for display and learning signals only."""
    return units / UNIT


def quantise_bids(bids: list[float]) -> list[int]:
    """Bids drawn as credit, clipped to [0, 1] credit and quantised to whole units."""
    return [min(max(round(b * UNIT), 0), UNIT) for b in bids]
