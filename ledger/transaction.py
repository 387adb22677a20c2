"""A transaction: the events of one moment of one episode, and the rules it must pass.

A transaction is one auction step (or a run's opening or closing). Its events share one
header (the transaction id `tx`, which is the first event's `seq`, the run, the episode, the
step and the SimPy time) and are numbered `tx, tx + 1, ...`. It is held compactly, as that
header plus `(model, own values)` per event (the values in `OWN[model]` order), and makes
typed Pydantic events from them on demand, validated.

Speed: the kernel writes millions of events and few are read back as objects, so it builds
this compact form directly (tuples cost a fraction of a validated model);
`Transaction.of` takes ready-made events, re-validated, for everyone else.

A transaction goes into a ledger whole or not at all: `check` raises a typed error first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from pydantic import ValidationError

from ledger.errors import (
    AccountClosed,
    ClosingBalance,
    InvalidEvent,
    SequenceError,
    UnbalancedTransaction,
    UnknownAccount,
)
from ledger.events import FIELDS, Balance, Close, Event, EventBase, Open, Pay, Transfer

HEADER = ("tx", "run", "episode", "step", "time")
"""The fields every event of a transaction shares (with `seq` = tx + its position)."""
OWN: dict[type[EventBase], tuple[str, ...]] = {m: f[len(HEADER) + 1 :] for m, f in FIELDS.items()}
"""Each kind's own fields, in the order a compact event lists them."""
assert all(f[: len(HEADER) + 1] == ("seq", *HEADER) for f in FIELDS.values())

Header = tuple[int, str, int, int, float]
Body = tuple[type[EventBase], tuple[Any, ...]]
TRANSFER_TYPES: frozenset[type[EventBase]] = frozenset(c for c in FIELDS if issubclass(c, Transfer))
MAX_AMOUNT = 2**63 - 1
"""The largest amount one event can carry (the stores keep amounts as int64)."""
_SRC, _DST, _AMOUNT, _ACCOUNT = 0, 1, 2, 0
assert all(OWN[c][:3] == ("src", "dst", "amount") for c in TRANSFER_TYPES)
assert OWN[Open][_ACCOUNT] == OWN[Close][_ACCOUNT] == "account"
ADDRESS_AT: dict[type[EventBase], tuple[int, ...]] = {
    m: () if m is Balance else tuple(i for i, f in enumerate(own) if f in ("account", "src", "dst"))
    for m, own in OWN.items()
}
"""Where each kind's own values name the accounts it acts for or pays (`events.accounts_of`);
none for a `Balance`, a statement the run's closing makes of closed accounts too."""


class Transaction:
    """The events of one atomic step: a shared header and each event's own values."""

    __slots__ = ("_events", "body", "header")

    def __init__(self, header: Header, body: list[Body]) -> None:
        self.header = header
        self.body = body
        self._events: list[Event] | None = None

    @classmethod
    def of(cls, events: Iterable[EventBase]) -> Transaction:
        """A transaction of ready-made events, each re-validated against its model.

        (Events made with `model_construct` skip Pydantic's checks; here they cannot.)
        """
        checked = [_validated(e) for e in events]
        if not checked:
            raise SequenceError("empty transaction")
        first = checked[0].__dict__
        header: Header = itemgetter(*HEADER)(first)
        for i, e in enumerate(checked):
            d = e.__dict__
            if d["seq"] != first["seq"] + i:
                raise SequenceError(
                    f"out-of-order sequence number {d['seq']}: expected {first['seq'] + i}"
                )
            if d["tx"] != first["seq"]:
                raise SequenceError(
                    f"event {d['seq']} names transaction {d['tx']}, expected {first['seq']}"
                )
            if itemgetter(*HEADER)(d) != header:
                raise InvalidEvent(
                    f"event {d['seq']}: the events of one transaction share "
                    "its run, episode, step and time"
                )
        return cls(
            header, [(type(e), tuple(map(e.__dict__.__getitem__, OWN[type(e)]))) for e in checked]
        )

    @property
    def first_seq(self) -> int:
        """The sequence number of the first event (also the transaction's id)."""
        return self.header[0]

    def events(self) -> list[Event]:
        """The typed events, each validated against its model (made once, then kept)."""
        if self._events is None:
            common = dict(zip(HEADER, self.header, strict=True))
            self._events = [
                m.model_validate(  # type: ignore[misc]
                    {"seq": self.header[0] + i, **common, **dict(zip(OWN[m], v, strict=True))}
                )
                for i, (m, v) in enumerate(self.body)
            ]
        return self._events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def __len__(self) -> int:
        return len(self.body)

    def transfers(self) -> Iterator[tuple[str, str, int]]:
        """(src, dst, amount) of every money-moving event."""
        for model, v in self.body:
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


def check(
    tx: Transaction,
    next_seq: int,
    accounts: frozenset[str],
    closed: frozenset[str] = frozenset(),
    balance: Callable[[str], int] | None = None,
) -> tuple[frozenset[str], frozenset[str]]:
    """Validate `tx` against the ledger head; return the accounts it opens and closes.

    `accounts` are the accounts opened so far, `closed` those of them closed, and `balance`
    gives an account's balance before `tx` (asked, and needed, only when `tx` closes one).
    Events are checked in order: an account opened later in the transaction is not yet
    known to an earlier transfer, and one closed earlier is closed to every later event.
    A `Balance` statement may name a closed account (a run's closing lists every account
    ever opened); any other event addressed to one is refused.
    """
    if not tx.body:
        raise SequenceError("empty transaction")
    first = tx.header[0]
    if first < next_seq:
        raise SequenceError(f"duplicate sequence number {first}: the ledger is at {next_seq}")
    if first > next_seq:
        raise SequenceError(f"out-of-order sequence number {first}: expected {next_seq}")
    if closed:
        return _check_lifecycle(tx, accounts, closed, balance)
    # Speed: while no account is closed, only transfers and opens need a look.
    known: frozenset[str] | set[str] = accounts
    opened: set[str] = set()
    for i, (model, v) in enumerate(tx.body):
        if model in TRANSFER_TYPES:
            _check_transfer(first + i, model, v, known)
        elif model in _OPEN_OR_CLOSE:
            if model is Close:
                return _check_lifecycle(tx, accounts, closed, balance)
            known = {*known, v[_ACCOUNT]}
            opened.add(v[_ACCOUNT])
    return (frozenset(opened) if opened else _NONE), _NONE


_OPEN_OR_CLOSE = frozenset({Open, Close})
_NONE: frozenset[str] = frozenset()


def _check_lifecycle(
    tx: Transaction,
    accounts: frozenset[str],
    closed: frozenset[str],
    balance: Callable[[str], int] | None,
) -> tuple[frozenset[str], frozenset[str]]:
    """`check`'s rules where an account is or becomes closed: each event's addressees too."""
    first = tx.header[0]
    known: frozenset[str] | set[str] = accounts
    gone: frozenset[str] | set[str] = closed
    opened: set[str] = set()
    shut: set[str] = set()
    for i, (model, v) in enumerate(tx.body):
        for at in ADDRESS_AT[model]:
            if v[at] in gone:
                raise AccountClosed(
                    f"event {first + i}: {model.__name__} addressed to closed account {v[at]!r}"
                )
        if model in TRANSFER_TYPES:
            _check_transfer(first + i, model, v, known)
        elif model is Open:
            known = {*known, v[_ACCOUNT]}
            opened.add(v[_ACCOUNT])
        elif model is Close:
            _check_close(tx, i, known, balance)
            gone = {*gone, v[_ACCOUNT]}
            shut.add(v[_ACCOUNT])
    return frozenset(opened), frozenset(shut)


def _check_close(
    tx: Transaction, i: int, known: frozenset[str] | set[str], balance: Callable[[str], int] | None
) -> None:
    """The account of the Close at `tx.body[i]` is open and holds exactly 0 there."""
    seq, account = tx.header[0] + i, tx.body[i][1][_ACCOUNT]
    if account not in known:
        raise UnknownAccount(f"event {seq}: account {account!r} was never opened")
    if balance is None:
        raise ValueError("checking a Close needs the ledger's balances")
    held = balance(account)
    for model, v in tx.body[:i]:
        if model in TRANSFER_TYPES:
            held += (v[_DST] == account) * v[_AMOUNT] - (v[_SRC] == account) * v[_AMOUNT]
    if held != 0:
        raise ClosingBalance(
            f"event {seq}: account {account!r} closes with balance {held}, not 0 "
            "(liquidate it first)"
        )


def _check_transfer(
    seq: int, model: type[EventBase], v: tuple[Any, ...], known: frozenset[str] | set[str]
) -> None:
    amount = v[_AMOUNT]
    if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
        raise UnbalancedTransaction(
            f"event {seq}: {model.__name__} amount {amount!r} is not a whole number of units "
            f"in [0, {MAX_AMOUNT}]"
        )
    src, dst = v[_SRC], v[_DST]
    if src not in known or dst not in known:
        missing = src if src not in known else dst
        raise UnknownAccount(f"event {seq}: account {missing!r} was never opened")
    if src == dst and model is not Pay:
        raise UnbalancedTransaction(f"event {seq}: a {model.__name__} to itself")
