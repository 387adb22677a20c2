"""The round kernel: every episode due at one SimPy instant is auctioned in one NumPy round.

The same market as `market.kernel.Kernel`, held as arrays over K episode slots instead of K
SimPy processes. At each instant one process draws the bids of every due episode with one
policy call, settles all their auctions at once (argmax, second price, mint by row), steps
the task for all of them with one `Task.transition` call, and publishes the round's
transactions as one `EventBatch`: row for row the events the episode kernel writes, in the
same order.

With unit durations (every tabular task) the two kernels write identical ledgers for the
same configuration and policy; `tests/test_rounds.py` holds them to it. Slots due at the
same instant go in slot order.

Speed: the cost per round is a fixed few hundred microseconds of NumPy calls, so the cost
per auction falls as the number of concurrent episodes grows (benchmarks/engine.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ledger.batch import CODE, Grid
from ledger.events import (
    AUCTIONEER,
    ENVIRONMENT,
    Allocate,
    Bid,
    EpisodeEnd,
    EpisodeStart,
    EventBase,
    Mint,
    Pay,
    Reward,
    Transform,
)
from ledger.units import quantise_bid_array, to_units_array
from market.core import Start
from market.mechanisms import RULES, Mechanism
from market.slots import SlotKernel, Stepped
from market.society import Policy, Society
from market.tasks import Task

_ENV, _AUCTIONEER = 0, 1


class _Positions(NamedTuple):
    """Where each event of one auction sits in its row of the round's (K, width) grid:
    EpisodeStart at 0, then the bids, Allocate, Pay, Mint, Transform, Reward, EpisodeEnd.
    Absent events (no Pay under `env`, no Mint, ...) are masked out of the grid."""

    bids: slice
    alloc: int
    pay: int
    mint: int
    transform: int
    reward: int
    end: int


class RoundKernel(SlotKernel):
    """Runs auction episodes of one task as rounds of array operations."""

    def __init__(
        self,
        start: Start,
        *,
        task: Task,
        society: Society,
        mechanism: Mechanism,
        policy: Policy,
        gamma: float,
    ) -> None:
        super().__init__(start, policy)
        self.task, self.mechanism, self.policy = task, mechanism, policy
        self._prims = np.asarray(society.primitive_of, dtype=np.int64)
        n = len(self._prims)
        names = [ENVIRONMENT, AUCTIONEER, *society.accounts, self.run, task.name, mechanism.value]
        self._strings = tuple(dict.fromkeys(names))
        code = self._strings.index
        self._bidders = np.array([code(a) for a in society.accounts], dtype=np.int64)
        self._codes = (code(self.run), code(task.name), code(mechanism.value))
        self._cloned, self._gamma = society.cloned, gamma
        self._pos = _Positions(slice(1, n + 1), *range(n + 1, n + 7))
        models: list[type[EventBase]] = [EpisodeStart, *[Bid] * n, Allocate, Pay, Mint]
        models += [Transform, Reward, EpisodeEnd]
        self._kind_at = np.array([CODE[m] for m in models], dtype=np.int8)
        self._width = n + 7

    def _schedule(self, slots: int) -> None:
        """Each slot's state up for auction and its seller, then the scheduler's own."""
        self._state = np.zeros(slots, dtype=np.int64)
        self._seller = np.zeros(slots, dtype=np.int64)
        super()._schedule(slots)

    def _begin(self, slots: NDArray[np.int64]) -> None:
        """Each starting slot's episode begins at its start state, the environment selling."""
        self._state[slots], self._seller[slots] = self.task.starts(self._ep[slots]), _ENV

    def _question(self, slots: NDArray[np.int64]) -> tuple[NDArray[np.int64]]:
        """The states up for auction."""
        return (self._state[slots],)

    def _decide(self, *question: Any) -> NDArray[np.float64]:
        """Every bidder's bid for each state."""
        return self.policy.bids(*question)

    def _observed(
        self, g: Grid, states: NDArray[np.int64], nxt: NDArray[np.int64], new: NDArray[np.bool_]
    ) -> dict[str, NDArray[np.float32]]:
        """The `obs` vector of a round's events, if the task records what it observed: an
        EpisodeStart's is its start state's, a Transform's its next state's."""
        if not self.task.records:
            return {}
        reached = self.task.recorded(nxt)
        rows = reached[g.row]
        if new.any():
            started = np.zeros_like(reached)
            started[new] = self.task.recorded(states[new])
            at_start = g.place == 0
            rows[at_start] = started[g.row[at_start]]
        return {"obs": rows}

    def _step(self, idx: NDArray[np.int64], now: float, answer: Any) -> Stepped:
        """One auction in each slot of `idx`, all settled together, on the bids `answer`
        for their states."""
        k, pos = len(idx), self._pos
        states, t = self._state[idx], self._t[idx]
        bids = quantise_bid_array(answer)
        w, b1, price, mint = self._settle(bids, t)
        has_price = price is not None
        prim, winner = self._prims[w], self._bidders[w]
        moved = self.task.transition(states, prim)
        nxt, done, duration = moved.next_state, moved.done, moved.duration
        reward = to_units_array(moved.reward)
        last = done | (t == self.task.horizon - 1)
        total = self._total[idx] + reward

        present = np.ones((k, self._width), dtype=bool)
        present[:, pos.pay] = has_price
        present[:, pos.mint] = mint > 0
        g = self._grid(present, t, last)
        gives = reward >= 0
        account, src, dst, amount, primitive = (g.cells() for _ in range(5))
        account[:, pos.bids] = self._bidders
        account[:, pos.alloc] = account[:, pos.transform] = winner
        src[:, pos.pay], dst[:, pos.pay] = winner, self._seller[idx]
        src[:, pos.mint], dst[:, pos.mint] = _AUCTIONEER, self._seller[idx]
        src[:, pos.reward] = np.where(gives, _ENV, winner)
        dst[:, pos.reward] = np.where(gives, winner, _ENV)
        amount[:, pos.bids] = bids
        amount[:, pos.alloc], amount[:, pos.pay] = b1, price if price is not None else 0
        amount[:, pos.mint], amount[:, pos.reward] = mint, np.abs(reward)
        primitive[:, pos.bids] = self._prims
        primitive[:, pos.alloc] = primitive[:, pos.transform] = prim

        batch = g.batch(
            self._kind_at,
            {
                **self._header(g, idx, now, total),
                "account": g.of_cells(account),
                "src": g.of_cells(src),
                "dst": g.of_cells(dst),
                "amount": g.of_cells(amount),
                "primitive": g.of_cells(primitive),
                "state": g.of_rows(states),
                "next_state": g.of_rows(nxt),
                "duration": g.of_rows(duration),
                "done": g.of_rows(done),
                "cloned": g.constant(self._cloned),
            },
            self._strings,
            self._observed(g, states, nxt, t == 0),
        )
        self._state[idx], self._seller[idx] = nxt, winner
        return Stepped(batch, reward, duration, last)

    def _settle(
        self, bids: NDArray[np.int64], t: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64] | None, NDArray[np.int64]]:
        """Each auction's winner (the first maximum: the lowest id wins ties), its bid, the
        price it pays (None: no payment under the mechanism) and the credit minted (none at
        an episode's first sale), by the mechanism table's row."""
        k = len(bids)
        w = bids.argmax(axis=1)
        b1 = bids[np.arange(k), w]
        b2 = np.sort(bids, axis=1)[:, -2] if bids.shape[1] > 1 else np.zeros(k, np.int64)
        rule = RULES[self.mechanism]
        minted = rule.mint_of(b1, b2)
        mint = minted * (t > 0) if minted is not None else np.zeros(k, np.int64)
        return w, b1, rule.price_of(b1, b2), mint
