"""A transaction (the events of one auction step, or a run's opening or closing) and its rules.

A transaction holds its events as compact records, `(model, values)` with the values in
`FIELDS[model]` order, and makes typed Pydantic events from them on demand (validated).
Speed: the kernel writes millions of events and most are never read back as objects, so it
builds records; `Transaction.of` takes ready-made events for everyone else.

A transaction goes into a ledger whole or not at all: `check` raises a typed error first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from pydantic import ValidationError

from ledger.errors import InvalidEvent, SequenceError, UnbalancedTransaction, UnknownAccount
from ledger.events import FIELDS, Event, EventBase, Open, Pay, Transfer

Record = tuple[type[EventBase], tuple[Any, ...]]
TRANSFER_TYPES: frozenset[type[EventBase]] = frozenset(c for c in FIELDS if issubclass(c, Transfer))
MAX_AMOUNT = 2**63 - 1
"""The largest amount one event can carry (the stores keep amounts as int64)."""
_SRC, _DST, _AMOUNT, _ACCOUNT = 6, 7, 8, 6  # positions after the six common fields
assert all(FIELDS[c][_SRC : _AMOUNT + 1] == ("src", "dst", "amount") for c in TRANSFER_TYPES)
assert FIELDS[Open][_ACCOUNT] == "account"


class Transaction:
    """The events of one atomic step, in sequence order."""

    __slots__ = ("_events", "records")

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self._events: list[Event] | None = None

    @classmethod
    def of(cls, events: Iterable[EventBase]) -> Transaction:
        """A transaction of ready-made events, each re-validated against its model.

        (Events made with `model_construct` skip Pydantic's checks; here they cannot.)
        """
        checked = [_validated(e) for e in events]
        records = [(type(e), itemgetter(*FIELDS[type(e)])(e.__dict__)) for e in checked]
        return cls(records)

    def events(self) -> list[Event]:
        """The typed events, each validated against its model (made once, then kept)."""
        if self._events is None:
            self._events = [
                m.model_validate(dict(zip(FIELDS[m], v, strict=True)))  # type: ignore[misc]
                for m, v in self.records
            ]
        return self._events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def __len__(self) -> int:
        return len(self.records)

    def transfers(self) -> Iterator[tuple[str, str, int]]:
        """(src, dst, amount) of every money-moving event."""
        for model, v in self.records:
            if model in TRANSFER_TYPES:
                yield v[_SRC], v[_DST], v[_AMOUNT]


def _validated(e: EventBase) -> EventBase:
    try:
        return type(e).model_validate(e.__dict__)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        seq = e.__dict__.get("seq")
        raise InvalidEvent(f"event {seq}: {type(e).__name__}.{where}: {first['msg']}") from None


def as_transaction(tx: Transaction | Sequence[EventBase]) -> Transaction:
    """`tx` as a Transaction."""
    return tx if isinstance(tx, Transaction) else Transaction.of(tx)


def check(tx: Transaction, next_seq: int, accounts: frozenset[str]) -> frozenset[str]:
    """Validate `tx` against the ledger head; return the accounts it opens.

    One pass over the records checks their numbering and their transfers, in order, so an
    account opened later in the same transaction is not yet known to an earlier transfer.
    """
    records = tx.records
    if not records:
        raise SequenceError("empty transaction")
    first = records[0][1][0]
    if first < next_seq:
        raise SequenceError(f"duplicate sequence number {first}: the ledger is at {next_seq}")
    known: frozenset[str] | set[str] = accounts
    opened: set[str] = set()
    seq = next_seq
    for model, v in records:
        if v[0] != seq:
            raise SequenceError(f"out-of-order sequence number {v[0]}: expected {seq}")
        if v[1] != first:
            raise SequenceError(f"event {v[0]} names transaction {v[1]}, expected {first}")
        seq += 1
        if model in TRANSFER_TYPES:
            _check_transfer(model, v, known)
        elif model is Open:
            known = {*known, v[_ACCOUNT]}
            opened.add(v[_ACCOUNT])
    return frozenset(opened)


def _check_transfer(
    model: type[EventBase], v: tuple[Any, ...], known: frozenset[str] | set[str]
) -> None:
    amount = v[_AMOUNT]
    if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
        raise UnbalancedTransaction(
            f"event {v[0]}: {model.__name__} amount {amount!r} is not a whole number of units "
            f"in [0, {MAX_AMOUNT}]"
        )
    src, dst = v[_SRC], v[_DST]
    if src not in known or dst not in known:
        missing = src if src not in known else dst
        raise UnknownAccount(f"event {v[0]}: account {missing!r} was never opened")
    if src == dst and model is not Pay:
        raise UnbalancedTransaction(f"event {v[0]}: a {model.__name__} to itself")
