"""The rules every transaction must pass before any of it is written.

A transaction is the events of one auction step (or of a run's opening or closing). It goes
in whole or not at all: `check` raises a typed error and the caller writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.errors import SequenceError, UnbalancedTransaction, UnknownAccount
from ledger.events import EventBase, Open, Pay, Transfer


def check(tx: Sequence[EventBase], next_seq: int, accounts: frozenset[str]) -> frozenset[str]:
    """Validate `tx` against the ledger head; return the accounts it opens."""
    if not tx:
        raise SequenceError("empty transaction")
    _check_sequence(tx, next_seq)
    opened = frozenset(e.account for e in tx if isinstance(e, Open))
    known = accounts | opened
    for e in tx:
        if isinstance(e, Transfer):
            _check_transfer(e, known)
    return opened


def _check_sequence(tx: Sequence[EventBase], next_seq: int) -> None:
    first = tx[0].seq
    if first < next_seq:
        raise SequenceError(f"duplicate sequence number {first}: the ledger is at {next_seq}")
    for i, e in enumerate(tx):
        if e.seq != next_seq + i:
            raise SequenceError(f"out-of-order sequence number {e.seq}: expected {next_seq + i}")
        if e.tx != first:
            raise SequenceError(f"event {e.seq} names transaction {e.tx}, expected {first}")


def _check_transfer(e: Transfer, known: frozenset[str]) -> None:
    amount = e.amount
    if type(amount) is not int or amount < 0:
        raise UnbalancedTransaction(
            f"event {e.seq}: {e.__class__.__name__} amount {amount!r} is not a whole, "
            "non-negative number of units"
        )
    for account in (e.src, e.dst):
        if account not in known:
            raise UnknownAccount(f"event {e.seq}: account {account!r} was never opened")
    if e.src == e.dst and not isinstance(e, Pay):
        raise UnbalancedTransaction(f"event {e.seq}: a {e.__class__.__name__} to itself")
