"""The ledger interface and its in-memory backend.

A ledger is append-only and totally ordered: `append` takes one transaction, checks it whole
against the head (sequence, transfers, accounts opened and closed) and either takes all of it
or raises a typed error and takes nothing. Readers see committed events as a Polars frame,
one row per event.

Closing an account needs its balance, which the ledger does not keep on every append (that
would tax every transfer of every run for the rare Close): `balances` folds the events
appended since it was last asked (those held in memory as `LiveBalances` does, those only on
disk with the columnar replay) when a Close is checked.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from types import TracebackType

import polars as pl

from ledger import schema, transaction
from ledger.batch import EventBatch, check_batch, table_of
from ledger.events import Event, EventBase
from ledger.replay import Balances, LiveBalances, replay_frame
from ledger.transaction import Transaction, as_transaction


class Ledger(abc.ABC):
    """An append-only, totally ordered store of events with atomic transaction appends; no
    event but a balance statement names an account after its `Close`."""

    def __init__(self) -> None:
        self.next_seq = 0
        self._accounts: frozenset[str] = frozenset()
        self._closed: frozenset[str] = frozenset()
        self._balances: Balances = {}
        self._folded = 0
        """`_balances` hold the events before this seq."""

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts opened so far (closed ones included)."""
        return self._accounts

    @property
    def closed(self) -> frozenset[str]:
        """The accounts closed so far."""
        return self._closed

    def append(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Check `tx` whole and stage it; on any violation raise and stage nothing."""
        tx = as_transaction(tx)
        accounts = self.accounts  # (a disk ledger reads its accounts, closed ones too, first)
        opened, closed = transaction.check(tx, self.next_seq, accounts, self._closed, self._balance)
        self.next_seq += len(tx)  # counted before staging: a commit the staging makes may
        if opened:  # fail after the transaction is staged, and a retry commits it
            self._accounts = self._accounts | opened
        if closed:
            self._closed = self._closed | closed
        self._stage(tx)

    def append_batch(self, batch: EventBatch) -> None:
        """Check a batch of whole transactions and stage it; on any violation raise and
        stage nothing of it."""
        accounts = self.accounts
        check_batch(batch, self.next_seq, accounts, self._closed)
        self.next_seq += len(batch)  # as in `append`: counted before a commit can fail
        self._stage(batch)

    def balances(self) -> Balances:
        """Every account's balance after the last appended event (staged ones included).

        Speed: folded from the events appended since the last call, so asking often costs
        the events in between, and never asking costs nothing.
        """
        self._fold()
        return dict(self._balances)

    def _balance(self, account: str) -> int:
        self._fold()
        return self._balances.get(account, 0)

    def _fold(self) -> None:
        if self._folded == self.next_seq:
            return
        stored, held = self._since(self._folded)
        if stored is not None:
            for account, delta in replay_frame(stored).items():
                self._balances[account] = self._balances.get(account, 0) + delta
        live = LiveBalances()
        live.balances = self._balances
        for item in held:
            if isinstance(item, EventBatch):
                live.apply_batch(item)
            else:
                live.apply(item)
        self._folded = self.next_seq

    @abc.abstractmethod
    def _stage(self, item: Transaction | EventBatch) -> None:
        """Keep a checked transaction or batch; it is committed by the next `flush`."""

    @abc.abstractmethod
    def _since(self, start: int) -> tuple[pl.LazyFrame | None, list[Transaction | EventBatch]]:
        """Every appended event from seq `start` on (where an appended transaction or batch
        begins): those only in storage as a frame (None if none), then the items held in
        memory."""

    def flush(self) -> None:  # noqa: B027 (a no-op where staging is committing)
        """Commit every staged transaction."""

    def close(self) -> None:
        """Commit what is staged and release the store."""
        self.flush()

    @abc.abstractmethod
    def scan(self) -> pl.LazyFrame:
        """Committed events as a lazy Polars frame in `schema.SCHEMA`, ordered by seq."""

    def chunks(
        self, events: int, columns: Sequence[str] | None = None, categories: bool = False
    ) -> Iterator[pl.DataFrame]:
        """Committed events in seq order, as consecutive frames of about `events` rows
        (`columns` only, if given): a whole-ledger fold reads one at a time, in bounded
        memory. A frame may end inside a transaction. With `categories`, the
        `schema.DICTIONARY` columns come as categories, not strings."""
        frame = self.scan()
        if categories:
            frame = frame.with_columns(dictionary_as(pl.Categorical))
        if columns is not None:
            frame = frame.select(columns)
        whole = frame.collect()
        size = max(events, 1)
        for i in range(0, whole.height, size):
            yield whole.slice(i, size)

    def backwards(self, columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        """Committed events from the last back, as consecutive frames (each in seq order,
        `columns` only), for readers that need only the tail: stop reading when done."""
        yield self.scan().select(columns).collect()

    def events(self, start: int = 0) -> Iterator[Event]:
        """Committed events from sequence number `start` on, as typed models."""
        frame = self.scan().filter(pl.col("seq") >= start).collect()
        yield from schema.from_table(frame.to_arrow())

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class MemoryLedger(Ledger):
    """A ledger held in memory: staging is committing."""

    def __init__(self) -> None:
        super().__init__()
        self._items: list[Transaction | EventBatch] = []

    def _stage(self, item: Transaction | EventBatch) -> None:
        self._items.append(item)

    def scan(self) -> pl.LazyFrame:
        return _frame(self._items)

    def _since(self, start: int) -> tuple[pl.LazyFrame | None, list[Transaction | EventBatch]]:
        return None, items_since(self._items, start)


def dictionary_as(dtype: type[pl.DataType]) -> list[pl.Expr]:
    """The `schema.DICTIONARY` columns cast to `dtype` (strings, or categories)."""
    return [pl.col(c).cast(dtype) for c in schema.DICTIONARY]


def items_since(
    items: list[Transaction | EventBatch], start: int
) -> list[Transaction | EventBatch]:
    """The trailing `items` that begin at or after seq `start` (walked from the end)."""
    i = len(items)
    while i and items[i - 1].first_seq >= start:
        i -= 1
    return items[i:]


def _frame(items: Sequence[Transaction | EventBatch]) -> pl.LazyFrame:
    frame = pl.from_arrow(table_of(items))
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()
