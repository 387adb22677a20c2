"""Balances as a fold over events: the live fold and the columnar replay give the same numbers.

Every transfer subtracts its amount from `src` and adds it to `dst`; nothing else moves money.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from ledger.batch import IS_TRANSFER, EventBatch
from ledger.events import TRANSFER_KINDS as _KINDS
from ledger.events import EventBase
from ledger.transaction import Transaction, as_transaction

if TYPE_CHECKING:  # the ledger folds balances with `replay_frame` when it closes an account
    from ledger.store import Ledger

Balances = dict[str, int]


class LiveBalances:
    """Balances kept up to date one transaction at a time (a bus subscriber)."""

    def __init__(self) -> None:
        self.balances: Balances = {}

    def apply(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Fold one transaction's transfers into the balances."""
        b = self.balances
        for src, dst, amount in as_transaction(tx).transfers():
            b[src] = b.get(src, 0) - amount
            b[dst] = b.get(dst, 0) + amount

    def apply_batch(self, batch: EventBatch) -> None:
        """Fold a batch's transfers: per account, its inflows minus its outflows.

        Exact: sums are taken in int64 only where they cannot overflow, else as Python ints.
        """
        moves = IS_TRANSFER[batch.kind]
        amount = batch.columns["amount"][moves]
        if amount.size == 0:
            return
        n = len(batch.strings)
        src, dst = batch.columns["src"][moves], batch.columns["dst"][moves]
        if int(amount.max()) < 2**63 // (2 * amount.size):
            delta = np.zeros(n, dtype=np.int64)
            np.add.at(delta, dst, amount)
            np.subtract.at(delta, src, amount)
            changes = [(i, int(delta[i])) for i in np.flatnonzero(delta).tolist()]
        else:
            big = [0] * n
            for s, d, a in zip(src.tolist(), dst.tolist(), amount.tolist(), strict=True):
                big[s] -= a
                big[d] += a
            changes = [(i, v) for i, v in enumerate(big) if v]
        b = self.balances
        for i, v in changes:
            name = batch.strings[i]
            b[name] = b.get(name, 0) + v


def postings(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Every transfer as two signed postings: (seq, account, delta)."""
    moves = frame.filter(pl.col("kind").is_in(list(_KINDS))).select("seq", "src", "dst", "amount")
    out = moves.select("seq", pl.col("src").alias("account"), (-pl.col("amount")).alias("delta"))
    into = moves.select("seq", pl.col("dst").alias("account"), pl.col("amount").alias("delta"))
    return pl.concat([out, into])


def replay_frame(frame: pl.LazyFrame, upto: int | None = None) -> Balances:
    """Balances after every event with seq <= `upto` (all events when None)."""
    if upto is not None:
        frame = frame.filter(pl.col("seq") <= upto)
    # Int128: each amount fits int64, but an account's total over a long run may not.
    sums = (
        postings(frame)
        .group_by("account")
        .agg(pl.col("delta").cast(pl.Int128).sum())
        .collect(engine="streaming")
    )
    return {a: int(d) for a, d in zip(sums["account"], sums["delta"], strict=True)}


def replay(ledger: Ledger, upto: int | None = None) -> Balances:
    """Balances of every account after event `upto`, folded from the committed ledger."""
    return replay_frame(ledger.scan(), upto)
