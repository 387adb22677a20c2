"""The ledger interface and its in-memory backend.

A ledger is append-only and totally ordered: `append` takes one transaction, checks it whole
against the head (sequence, transfers, accounts) and either takes all of it or raises a typed
error and takes nothing. Readers see committed events as a Polars frame, one row per event.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from types import TracebackType

import polars as pl

from ledger import schema, transaction
from ledger.batch import EventBatch, check_batch, table_of
from ledger.events import Event, EventBase
from ledger.transaction import Transaction, as_transaction


class Ledger(abc.ABC):
    """An append-only, totally ordered store of events with atomic transaction appends."""

    def __init__(self) -> None:
        self.next_seq = 0
        self._accounts: frozenset[str] = frozenset()

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts opened so far."""
        return self._accounts

    def append(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Check `tx` whole and stage it; on any violation raise and stage nothing."""
        tx = as_transaction(tx)
        opened = transaction.check(tx, self.next_seq, self.accounts)
        self._stage(tx)
        self.next_seq += len(tx)
        if opened:
            self._accounts = self._accounts | opened

    def append_batch(self, batch: EventBatch) -> None:
        """Check a batch of whole transactions and stage it; on any violation raise and
        stage nothing of it."""
        check_batch(batch, self.next_seq, self.accounts)
        self._stage(batch)
        self.next_seq += len(batch)

    @abc.abstractmethod
    def _stage(self, item: Transaction | EventBatch) -> None:
        """Keep a checked transaction or batch; it is committed by the next `flush`."""

    def flush(self) -> None:  # noqa: B027 (a no-op where staging is committing)
        """Commit every staged transaction."""

    def close(self) -> None:
        """Commit what is staged and release the store."""
        self.flush()

    @abc.abstractmethod
    def scan(self) -> pl.LazyFrame:
        """Committed events as a lazy Polars frame in `schema.SCHEMA`, ordered by seq."""

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
        frame = pl.from_arrow(table_of(self._items))
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy()
