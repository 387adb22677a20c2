"""Each bidder's auction utility, folded from the payoff events addressed to it.

For the winner of step t: U_t = reward_t - (price paid at t) + gamma^duration_t * (everything
credited to it for the state it sold at t + 1: the next winner's payment and any mint).
Every bidder of step t starts at 0, so losers get exactly 0. With a `Fraction` gamma the
result is exact, which is how the conservation identities are tested.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import TypeVar

from ledger.events import ENVIRONMENT, Bid, EventBase, Mint, Pay, Reward, Transform

Num = TypeVar("Num", float, Fraction)
Key = tuple[int, int, str]
"""(episode, step, account)."""


def utilities(events: Iterable[EventBase], gamma: Num) -> dict[Key, Num]:
    """U for every (episode, step, bidder) in `events`, from ledger amounts in units."""
    zero = gamma - gamma
    u: dict[Key, Num] = {}
    discounts: dict[tuple[int, int], Num] = {}
    for e in events:
        ep, t = e.episode, e.step
        if isinstance(e, Bid):
            u.setdefault((ep, t, e.account), zero)
        elif isinstance(e, Transform):
            discounts[(ep, t)] = discount(gamma, e.duration)
        elif isinstance(e, Reward):
            if e.dst != ENVIRONMENT:
                u[(ep, t, e.dst)] = u.get((ep, t, e.dst), zero) + e.amount
            else:
                u[(ep, t, e.src)] = u.get((ep, t, e.src), zero) - e.amount
        elif isinstance(e, Pay | Mint):
            if isinstance(e, Pay):
                u[(ep, t, e.src)] = u.get((ep, t, e.src), zero) - e.amount
            if t > 0 and e.dst != ENVIRONMENT:
                key = (ep, t - 1, e.dst)
                u[key] = u.get(key, zero) + discounts[(ep, t - 1)] * e.amount
    return u


def discount(gamma: Num, duration: float) -> Num:
    """gamma ** duration, exact for a Fraction gamma and a whole duration."""
    if float(duration).is_integer():
        return gamma ** int(duration)
    return type(gamma)(float(gamma) ** duration)
