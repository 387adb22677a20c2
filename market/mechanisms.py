"""The auction mechanisms of Chang et al. (2020): one table (`RULES`) and one settlement.

The highest bid wins (ties: the lowest bidder id). The winner pays the previous winner (the
seller; the environment at the first auction of an episode) the row's price, and under a
row with a mint the auctioneer credits the seller that much more after the first sale.
Both kernels, the audit's Polars rules and the CLI's help read the same row, evaluated on
ints, NumPy arrays or Polars expressions alike; docs/engine.md shows the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar, cast


class Mechanism(StrEnum):
    """The keys of the mechanism table."""

    CCV = "ccv"
    V = "v"
    BB = "bb"
    FP = "fp"
    ENV = "env"


Prices = TypeVar("Prices")
"""Bids as ints, NumPy arrays or Polars expressions: a rule reads the same on each."""


@dataclass(frozen=True)
class Rule:
    """One mechanism's row of the table: what the winner pays the seller, and the credit the
    auctioneer creates for the seller after the first sale, both from (b1, b2)."""

    price: Callable[[Any, Any], Any] | None
    """(b1, b2) -> the price; None where the winner pays nothing."""
    mint: Callable[[Any, Any], Any] | None
    """(b1, b2) -> the credit minted for the seller; None where nothing is ever minted."""
    describe: str
    """The row in words (the CLI's help and docs/engine.md show it)."""

    def price_of(self, b1: Prices, b2: Prices) -> Prices | None:
        return None if self.price is None else cast(Prices, self.price(b1, b2))

    def mint_of(self, b1: Prices, b2: Prices) -> Prices | None:
        return None if self.mint is None else cast(Prices, self.mint(b1, b2))


def _first(b1: Any, b2: Any) -> Any:
    return b1


def _second(b1: Any, b2: Any) -> Any:
    return b2


def _spread(b1: Any, b2: Any) -> Any:
    return b1 - b2


RULES: dict[Mechanism, Rule] = {
    Mechanism.CCV: Rule(_second, None, "credit-conserving Vickrey: pays b2, seller gets b2"),
    Mechanism.V: Rule(_second, _spread, "Vickrey: pays b2, seller gets b1 (b1 - b2 minted)"),
    Mechanism.BB: Rule(_first, None, "bucket brigade: pays b1, seller gets b1"),
    Mechanism.FP: Rule(_first, None, "first price: pays b1, seller gets b1"),
    Mechanism.ENV: Rule(None, None, "environment reward only: no payment"),
}
"""The mechanism table, read by both kernels, the audit and the CLI's help."""


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
    rule = RULES[mechanism]
    mint = None if first_sale else rule.mint_of(b1, b2)
    return Settlement(w, b1, b2, rule.price_of(b1, b2), 0 if mint is None else mint)


def parse(name: str) -> Mechanism:
    """The mechanism called `name`; a ValueError names the choices otherwise."""
    try:
        return Mechanism(name)
    except ValueError:
        choices = ", ".join(m.value for m in Mechanism)
        raise ValueError(f"unknown mechanism {name!r}; choose one of: {choices}") from None
