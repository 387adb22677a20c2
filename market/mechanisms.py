"""The auction mechanisms of Chang et al. (2020) as one pure settlement rule.

The highest bid wins (ties: the lowest bidder id). The winner pays the previous winner (the
seller; the environment at the first auction of an episode):

| key | price paid | seller credited | credit created |
|-----|------------|-----------------|----------------|
| ccv | b2         | b2              | 0              |
| v   | b2         | b1              | b1 - b2 (auctioneer mint; not at the first sale) |
| bb  | b1         | b1              | 0              |
| fp  | b1         | b1              | 0              |
| env | nothing    | nothing         | 0              |
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple


class Mechanism(StrEnum):
    """The keys of the mechanism table."""

    CCV = "ccv"
    V = "v"
    BB = "bb"
    FP = "fp"
    ENV = "env"


PAYS_SECOND_PRICE = frozenset({Mechanism.CCV, Mechanism.V})
PAYS_FIRST_PRICE = frozenset({Mechanism.BB, Mechanism.FP})


class Settlement(NamedTuple):
    """The outcome of one auction: who won, at what price, and what credit is created."""

    winner: int
    b1: int
    b2: int
    price: int | None
    """What the winner pays the seller; None where the mechanism has no payment."""
    mint: int
    """Credit the auctioneer creates for the seller on top of the price."""


def winner(bids: Sequence[int]) -> tuple[int, int, int]:
    """(winning bidder id, highest bid b1, second-highest bid b2); b2 = 0 with one bidder."""
    b1 = max(bids)
    w = bids.index(b1)  # the first maximum is the lowest id: the documented tie rule
    b2 = sorted(bids)[-2] if len(bids) > 1 else 0
    return w, b1, b2


def settle(mechanism: Mechanism, bids: Sequence[int], first_sale: bool) -> Settlement:
    """Settle one auction of integer bids; `first_sale` when the seller is the environment."""
    w, b1, b2 = winner(bids)
    if mechanism in PAYS_SECOND_PRICE:
        price: int | None = b2
    elif mechanism in PAYS_FIRST_PRICE:
        price = b1
    else:
        price = None
    mint = b1 - b2 if mechanism is Mechanism.V and not first_sale else 0
    return Settlement(winner=w, b1=b1, b2=b2, price=price, mint=mint)


def parse(name: str) -> Mechanism:
    """The mechanism called `name`; a ValueError names the choices otherwise."""
    try:
        return Mechanism(name)
    except ValueError:
        choices = ", ".join(m.value for m in Mechanism)
        raise ValueError(f"unknown mechanism {name!r}; choose one of: {choices}") from None
