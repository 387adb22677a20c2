"""Auction utilities folded live, one committed transaction at a time (a bus subscriber).

The same rule as `ledger.utilities.utilities`, computed incrementally: a bidder's utility
for step t is final once the episode's next auction has paid for the state it sold (or the
episode has ended), and is then handed to `on_sample` with the state and the bid it made.
Samples come a finished auction at a time (every bidder of it at once). This is how learners
get their data: from the ledger's own events, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, NamedTuple

from ledger.events import ENVIRONMENT, Bid, EpisodeEnd, EventBase, Mint, Pay, Reward, Transform
from ledger.transaction import OWN, Transaction
from ledger.utilities import Num, discount


def _at(model: type[EventBase], name: str) -> int:
    return OWN[model].index(name)


_BID_ACCOUNT, _BID_PRIMITIVE, _BID_STATE, _BID_AMOUNT = (
    _at(Bid, f) for f in ("account", "primitive", "state", "amount")
)
_SRC, _DST, _AMOUNT = (_at(Pay, f) for f in ("src", "dst", "amount"))
_DURATION = _at(Transform, "duration")


class Sample(NamedTuple):
    """One bidder's finished auction: what it saw, what it bid, what it got (units)."""

    episode: int
    step: int
    account: str
    primitive: int
    state: int
    bid: int
    utility: float | Fraction


@dataclass(slots=True)
class _Step(Generic[Num]):
    """An episode's latest auction, waiting for the next sale to finish its utilities."""

    step: int
    discount: Num
    bids: list[tuple[str, int, int, int]]
    utility: dict[str, Num]


class PayoffTracker(Generic[Num]):
    """Turns committed auction transactions into finished (state, bid, utility) samples."""

    def __init__(self, gamma: Num, on_samples: Callable[[list[Sample]], None]) -> None:
        self.gamma: Num = gamma
        self.on_samples: Callable[[list[Sample]], None] = on_samples
        self._open: dict[int, _Step[Num]] = {}

    def apply(self, tx: Transaction) -> None:
        """Fold one committed transaction (a no-op for anything but an auction)."""
        episode, t = tx.header[2], tx.header[3]
        body = tx.body
        if not any(m is Bid for m, _ in body):
            return
        previous = self._open.pop(episode, None)
        zero = self.gamma - self.gamma
        now: _Step[Num] = _Step(t, zero, [], {})
        ended = False
        for model, v in body:
            if model is Bid:
                account = v[_BID_ACCOUNT]
                now.bids.append((account, v[_BID_PRIMITIVE], v[_BID_STATE], v[_BID_AMOUNT]))
                now.utility[account] = zero
            elif model is Pay or model is Mint:
                if model is Pay:
                    now.utility[v[_SRC]] -= v[_AMOUNT]
                if previous is not None and v[_DST] != ENVIRONMENT:
                    previous.utility[v[_DST]] += previous.discount * v[_AMOUNT]
            elif model is Reward:
                if v[_DST] != ENVIRONMENT:
                    now.utility[v[_DST]] += v[_AMOUNT]
                else:
                    now.utility[v[_SRC]] -= v[_AMOUNT]
            elif model is Transform:
                now.discount = discount(self.gamma, v[_DURATION])
            elif model is EpisodeEnd:
                ended = True
        if previous is not None:
            self._emit(episode, previous)
        if ended:
            self._emit(episode, now)
        else:
            self._open[episode] = now

    def _emit(self, episode: int, step: _Step[Num]) -> None:
        u, t = step.utility, step.step
        self.on_samples([Sample(episode, t, a, p, s, b, u[a]) for a, p, s, b in step.bids])
