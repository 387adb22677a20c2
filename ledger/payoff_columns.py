"""Auction utilities folded from committed batches with array operations (a bus subscriber).

The rule of `ledger.payoffs.PayoffTracker`, column-wise, for the round kernel's batches: a
bidder's utility for an auction is its reward, minus what it paid, plus gamma^duration
times what the episode's next auction paid it for the state it sold. An auction's samples
are final once the next auction of its episode is committed (or its episode has ended);
until then it is carried over to the next batch.

Samples come in the order the one-transaction-at-a-time tracker gives them (by the
transaction that finishes them; an episode's previous auction before its ending one), with
bitwise the same float utilities: own terms are summed exactly as integers and the
discounted income is added in row order. `tests/test_payoff_columns.py` holds it to both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ledger.batch import CODE, EventBatch
from ledger.events import ENVIRONMENT, Bid, EpisodeEnd, Mint, Pay, Reward, Transform
from ledger.utilities import discount

_BID, _PAY, _MINT = CODE[Bid], CODE[Pay], CODE[Mint]
_REWARD, _TRANSFORM, _END = CODE[Reward], CODE[Transform], CODE[EpisodeEnd]
I64 = NDArray[np.int64]


class SampleColumns(NamedTuple):
    """Finished samples, one row per (auction, bidder), in the order they finished."""

    episode: I64
    step: I64
    account: I64
    """Codes into `strings`."""
    primitive: I64
    state: I64
    bid: I64
    utility: NDArray[np.float64]
    """In units (a float: the next price enters discounted)."""
    auction: I64
    """The finished auction each row belongs to, numbered from 0 in this delivery."""
    strings: tuple[str, ...]

    def __len__(self) -> int:  # the number of samples, not of fields
        return len(self.bid)


class _Open(NamedTuple):
    """Auctions waiting for their episode's next sale, and their bids (rows by auction)."""

    episode: I64
    step: I64
    discount: NDArray[np.float64]
    utility: NDArray[np.float64]
    """(auctions, accounts) in units."""
    bid_auction: I64
    account: I64
    primitive: I64
    state: I64
    bid: I64
    strings: tuple[str, ...]


def _empty(strings: tuple[str, ...]) -> _Open:
    z = np.zeros(0, dtype=np.int64)
    return _Open(z, z, np.zeros(0), np.zeros((0, len(strings))), z, z, z, z, z, strings)


class BatchPayoffTracker:
    """Turns committed batches of auction transactions into finished samples, as columns."""

    def __init__(self, gamma: float, on_samples: Callable[[SampleColumns], None]) -> None:
        self.gamma = gamma
        self.on_samples = on_samples
        self._open: _Open | None = None
        self._discounts: dict[float, float] = {}

    def apply_batch(self, batch: EventBatch) -> None:
        """Fold one committed batch (rows outside auctions are ignored)."""
        batch = batch.canonical()
        kind, cols = batch.kind, batch.columns
        bid_rows = np.flatnonzero(kind == _BID)
        if bid_rows.size == 0:
            return
        carried = self._carried(batch.strings)
        m = len(carried.episode)
        at, first = _auctions_of(cols, bid_rows, m)
        episode = np.concatenate([carried.episode, cols["episode"][first]])
        step = np.concatenate([carried.step, cols["step"][first]])
        n = len(first)
        ended = np.zeros(m + n, dtype=bool)
        ended[at[(kind == _END) & (at >= 0)]] = True
        disc = np.concatenate([carried.discount, self._discounts_at(batch, at, m, n)])
        env = batch.strings.index(ENVIRONMENT) if ENVIRONMENT in batch.strings else -1
        utility = _own_terms(batch, at, m + n, env)
        utility[:m] = carried.utility
        prev, succ = _neighbours(episode)
        _add_income(utility, batch, at, prev, disc, env)
        final = ended | (succ >= 0)
        old = (carried.bid_auction, carried.account, carried.primitive, carried.state, carried.bid)
        new = (
            at[bid_rows],
            *(cols[c][bid_rows] for c in ("account", "primitive", "state", "amount")),
        )
        auction, account, primitive, state, bid = (
            np.concatenate(pair) for pair in zip(old, new, strict=True)
        )
        bids = _Open(
            episode, step, disc, utility, auction, account, primitive, state, bid, batch.strings
        )
        rank = _finishing_order(final, succ)
        samples = _finished(bids, rank)
        self._open = _still_open(bids, final)
        if len(samples):
            self.on_samples(samples)

    def _discounts_at(self, batch: EventBatch, at: I64, m: int, n: int) -> NDArray[np.float64]:
        """gamma^duration of each of the batch's `n` auctions (numbered from `m`), by its
        Transform."""
        disc = np.zeros(n)
        transforms = np.flatnonzero((batch.kind == _TRANSFORM) & (at >= 0))
        durations = batch.columns["duration"][transforms]
        if durations.size and durations.min() == durations.max():  # the usual case: one value
            disc[at[transforms] - m] = self._discount(float(durations[0]))
        else:
            values, which = np.unique(durations, return_inverse=True)
            found = np.array([self._discount(d) for d in values.tolist()])
            disc[at[transforms] - m] = found[which]
        return disc

    def _carried(self, strings: tuple[str, ...]) -> _Open:
        """The open auctions, with their account codes in `strings`' numbering."""
        c = self._open
        if c is None:
            return _empty(strings)
        if c.strings == strings:
            return c
        to = np.array([strings.index(s) if s in strings else -1 for s in c.strings])
        utility = np.zeros((len(c.episode), len(strings)))
        for old, new in enumerate(to.tolist()):
            if new >= 0:
                utility[:, new] = c.utility[:, old]
        return c._replace(utility=utility, account=to[c.account], strings=strings)

    def _discount(self, duration: float) -> float:
        """gamma ** duration, as `ledger.utilities.discount` computes it (cached)."""
        if duration not in self._discounts:
            self._discounts[duration] = discount(self.gamma, duration)
        return self._discounts[duration]


def _auctions_of(cols: Mapping[str, NDArray[Any]], bid_rows: I64, m: int) -> tuple[I64, I64]:
    """Each row's auction, numbered after the `m` carried ones (-1: a row outside any), and
    each auction's first bid row. Rows come in transactions, in order: number them, then
    number the auctions."""
    new_tx = cols["seq"] == cols["tx"]
    tx_of_row = np.cumsum(new_tx) - 1
    is_auction = np.zeros(int(tx_of_row[-1]) + 1, dtype=bool)
    is_auction[tx_of_row[bid_rows]] = True
    auction_of_tx = np.where(is_auction, np.cumsum(is_auction) - 1 + m, -1)
    at: I64 = auction_of_tx[tx_of_row]
    first: I64 = bid_rows[np.flatnonzero(np.diff(at[bid_rows], prepend=-2))]
    return at, first


def _own_terms(batch: EventBatch, at: I64, auctions: int, env: int) -> NDArray[np.float64]:
    """(auctions, accounts): each account's reward less what it paid in each auction, summed
    exactly as integers, in units."""
    kind, cols = batch.kind, batch.columns
    src, dst, amount = cols["src"], cols["dst"], cols["amount"]
    own = np.zeros((auctions, len(batch.strings)), dtype=np.int64)
    pays = np.flatnonzero((kind == _PAY) & (at >= 0))
    np.subtract.at(own, (at[pays], src[pays]), amount[pays])
    rewards = np.flatnonzero((kind == _REWARD) & (at >= 0))
    to_env = dst[rewards] == env
    who = np.where(to_env, src[rewards], dst[rewards])
    np.add.at(own, (at[rewards], who), np.where(to_env, -amount[rewards], amount[rewards]))
    return own.astype(np.float64)


def _neighbours(episode: I64) -> tuple[I64, I64]:
    """Each auction's previous and next auction of its episode (-1: none)."""
    order = np.lexsort((np.arange(len(episode)), episode))
    same = episode[order][1:] == episode[order][:-1]
    prev = np.full(len(episode), -1, dtype=np.int64)
    succ = np.full(len(episode), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    succ[order[:-1][same]] = order[1:][same]
    return prev, succ


def _add_income(
    utility: NDArray[np.float64],
    batch: EventBatch,
    at: I64,
    prev: I64,
    disc: NDArray[np.float64],
    env: int,
) -> None:
    """Add to each seller's utility for the auction it bought in what the next auction paid
    it for the state, discounted, in row order."""
    kind, cols = batch.kind, batch.columns
    dst, amount = cols["dst"], cols["amount"]
    income = np.flatnonzero(((kind == _PAY) | (kind == _MINT)) & (at >= 0) & (dst != env))
    income = income[prev[at[income]] >= 0]
    sold = prev[at[income]]
    np.add.at(utility, (sold, dst[income]), disc[sold] * amount[income])


def _finishing_order(final: NDArray[np.bool_], succ: I64) -> I64:
    """Each final auction's rank among them (-1: still open), in the order the tracker of
    single transactions finishes them: by the transaction that finishes each (an auction's
    successor's, or its own ending's), an episode's previous auction before its ending one."""
    key = np.where(succ >= 0, 2 * succ, 2 * np.arange(len(final)) + 1)
    finished = np.flatnonzero(final)
    finished = finished[np.argsort(key[finished], kind="stable")]
    rank = np.full(len(final), -1, dtype=np.int64)
    rank[finished] = np.arange(len(finished))
    return rank


def _finished(bids: _Open, rank: I64) -> SampleColumns:
    """The samples of the auctions ranked (`rank` >= 0), in rank order."""
    out = np.flatnonzero(rank[bids.bid_auction] >= 0)
    out = out[np.argsort(rank[bids.bid_auction[out]], kind="stable")]
    a = bids.bid_auction[out]
    return SampleColumns(
        bids.episode[a],
        bids.step[a],
        bids.account[out],
        bids.primitive[out],
        bids.state[out],
        bids.bid[out],
        bids.utility[a, bids.account[out]],
        rank[a],
        bids.strings,
    )


def _still_open(bids: _Open, final: NDArray[np.bool_]) -> _Open:
    """The auctions not `final`, and their bids, renumbered."""
    keep = ~final
    renumber = np.cumsum(keep) - 1
    stay = keep[bids.bid_auction]
    return _Open(
        bids.episode[keep],
        bids.step[keep],
        bids.discount[keep],
        bids.utility[keep],
        renumber[bids.bid_auction[stay]],
        bids.account[stay],
        bids.primitive[stay],
        bids.state[stay],
        bids.bid[stay],
        bids.strings,
    )
