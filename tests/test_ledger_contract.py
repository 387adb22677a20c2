"""The ledger contract, run against every backend: atomic, ordered, typed, replayable, balanced."""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import pytest
from conftest import (
    ACCOUNTS,
    ALICE,
    BOB,
    Tx,
    append_all,
    committed,
    control_history,
    head,
    history,
    lifecycle_history,
    moves,
    next_seq,
    opening,
)

from ledger.errors import (
    AccountClosed,
    InvalidEvent,
    LedgerError,
    SequenceError,
    UnbalancedTransaction,
    UnknownAccount,
)
from ledger.events import (
    ENVIRONMENT,
    EVENT_TYPES,
    Bid,
    Close,
    Endow,
    EventBase,
    Mint,
    Open,
    Pay,
    Reward,
)
from ledger.replay import LiveBalances, replay
from ledger.store import Ledger
from ledger.transaction import OWN, Body, Transaction
from market.bus import Bus

HEAD = len(ACCOUNTS) + 1
"""The ledger head after the opening transaction."""


def _bad(kind: type[EventBase], **fields: Any) -> EventBase:
    """A last event made without validation, as a buggy producer could make it."""
    return kind.model_construct(**head(HEAD + 2, HEAD), **fields)


def _record(amount: object) -> Body:
    """A raw last Pay in compact form (the kernel's fast path, never validated as a model)."""
    values = {"src": ALICE, "dst": BOB, "amount": amount}
    return Pay, tuple(values[f] for f in OWN[Pay])


def _with_bad(bad: EventBase | Body) -> Tx | Transaction:
    """A transaction that opens an account and pays it, then ends with `bad`."""
    good: Tx = [
        Open(**head(HEAD, HEAD), account="carol"),
        Pay(**head(HEAD + 1, HEAD), src=ALICE, dst="carol", amount=5),
    ]
    if isinstance(bad, tuple):
        compact = Transaction.of(good)
        return Transaction(compact.header, [*compact.body, bad])
    return [*good, bad]


BAD: dict[str, tuple[EventBase | Body, type[LedgerError]]] = {
    "unopened-dst": (_bad(Pay, src=ALICE, dst="mallory", amount=1), UnknownAccount),
    "unopened-src": (_bad(Reward, src="mallory", dst=BOB, amount=1), UnknownAccount),
    "mint-to-self": (_bad(Mint, src=BOB, dst=BOB, amount=1), UnbalancedTransaction),
    "reward-to-self": (_bad(Reward, src=BOB, dst=BOB, amount=1), UnbalancedTransaction),
    "beyond-int64": (_bad(Pay, src=ALICE, dst=BOB, amount=2**63), UnbalancedTransaction),
    "event-negative": (_bad(Pay, src=ALICE, dst=BOB, amount=-1), InvalidEvent),
    "event-fractional": (_bad(Pay, src=ALICE, dst=BOB, amount=2.5), InvalidEvent),
    "event-whole-float": (_bad(Pay, src=ALICE, dst=BOB, amount=2.0), InvalidEvent),
    "event-string": (_bad(Pay, src=ALICE, dst=BOB, amount="5"), InvalidEvent),
    "event-bool": (_bad(Pay, src=ALICE, dst=BOB, amount=True), InvalidEvent),
    "event-no-amount": (_bad(Reward, src=ENVIRONMENT, dst=BOB), InvalidEvent),
    "event-negative-bid": (_bad(Bid, account=BOB, primitive=0, state=0, amount=-5), InvalidEvent),
    "record-negative": (_record(-1), UnbalancedTransaction),
    "record-float": (_record(2.0), UnbalancedTransaction),
    "record-bool": (_record(True), UnbalancedTransaction),
    "record-beyond-int64": (_record(2**63), UnbalancedTransaction),
}
"""One bad last event per fault: an event that breaks its model is an InvalidEvent; a raw
record skips the models, so the ledger's own transfer rules must catch it."""


def _good() -> Tx:
    return moves(HEAD, (Pay, ALICE, BOB, 3), (Reward, ENVIRONMENT, ALICE, 4))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_event_rejects_transaction_with_typed_error(opened: Ledger, case: str) -> None:
    """A transaction with one bad event raises the typed error of that event's fault."""
    bad, error = BAD[case]
    with pytest.raises(error):
        opened.append(_with_bad(bad))


@pytest.mark.parametrize("case", list(BAD))
def test_rejected_transaction_leaves_nothing(opened: Ledger, case: str) -> None:
    """A rejected transaction leaves no event, no account and no sequence number behind."""
    before = committed(opened)
    with pytest.raises(LedgerError):
        opened.append(_with_bad(BAD[case][0]))
    assert (opened.next_seq, opened.accounts) == (HEAD, frozenset(ACCOUNTS))
    assert committed(opened) == before
    assert opened.scan().collect().height == HEAD


@pytest.mark.parametrize("case", list(BAD))
def test_good_transaction_appends_after_rejection(opened: Ledger, case: str) -> None:
    """After a rejection the next good transaction takes the same sequence numbers."""
    with pytest.raises(LedgerError):
        opened.append(_with_bad(BAD[case][0]))
    opened.append(_good())
    assert committed(opened)[HEAD:] == _good()
    assert opened.next_seq == HEAD + 2


@pytest.mark.parametrize("last", [_record(1), _bad(Pay, src=ALICE, dst=BOB, amount=1)])
def test_same_transaction_with_good_last_event_appends(
    opened: Ledger, last: EventBase | Body
) -> None:
    """The faults above lie in the bad event alone: with a good one the transaction appends."""
    opened.append(_with_bad(last))
    assert [type(e).__name__ for e in committed(opened)[HEAD:]] == ["Open", "Pay", "Pay"]


def test_pay_to_itself_is_a_valid_transfer(opened: Ledger) -> None:
    """A Pay may go from an account to itself (a winner buying its own state)."""
    opened.append(moves(HEAD, (Pay, ALICE, ALICE, 5)))
    assert committed(opened)[-1] == Pay(**head(HEAD, HEAD), src=ALICE, dst=ALICE, amount=5)


def test_largest_int64_amount_is_stored(opened: Ledger) -> None:
    """The largest amount the store can hold is accepted and read back exactly."""
    tx = moves(HEAD, (Pay, ALICE, BOB, 2**63 - 1))
    opened.append(tx)
    assert committed(opened)[HEAD:] == tx


def test_transfer_from_account_opened_in_same_transaction(opened: Ledger) -> None:
    """An account opened earlier in a transaction can receive money later in it."""
    tx = [
        Open(**head(HEAD, HEAD), account="carol"),
        Pay(**head(HEAD + 1, HEAD), src=ALICE, dst="carol", amount=2),
    ]
    opened.append(tx)
    assert "carol" in opened.accounts
    assert committed(opened)[HEAD:] == tx


def test_transfer_before_open_in_same_transaction_is_rejected(opened: Ledger) -> None:
    """Money cannot move to an account before its Open, even within one transaction."""
    tx = [
        Pay(**head(HEAD, HEAD), src=ALICE, dst="carol", amount=2),
        Open(**head(HEAD + 1, HEAD), account="carol"),
    ]
    with pytest.raises(UnknownAccount):
        opened.append(tx)
    assert "carol" not in opened.accounts


def _renumber(tx: Tx, seqs: list[int]) -> Tx:
    """`tx` with its events given sequence numbers `seqs` (tx = the first of them)."""
    return [e.model_copy(update={"seq": s, "tx": seqs[0]}) for e, s in zip(tx, seqs, strict=True)]


SEQUENCES: dict[str, list[int]] = {
    "duplicate-of-committed": [HEAD - 1, HEAD],
    "restart-at-zero": [0, 1],
    "gap-before": [HEAD + 1, HEAD + 2],
    "gap-inside": [HEAD, HEAD + 2],
    "out-of-order": [HEAD + 1, HEAD],
    "repeated-inside": [HEAD, HEAD],
}


@pytest.mark.parametrize("case", list(SEQUENCES))
def test_bad_sequence_rejected_whole(opened: Ledger, case: str) -> None:
    """Duplicate, gapped or out-of-order sequence numbers reject the whole transaction."""
    with pytest.raises(SequenceError):
        opened.append(_renumber(_good(), SEQUENCES[case]))
    assert opened.next_seq == HEAD
    assert len(committed(opened)) == HEAD


def test_event_naming_another_transaction_is_rejected(opened: Ledger) -> None:
    """Every event of a transaction names the transaction's first sequence number."""
    tx = _good()
    tx[1] = tx[1].model_copy(update={"tx": HEAD + 1})
    with pytest.raises(SequenceError):
        opened.append(tx)
    assert len(committed(opened)) == HEAD


def test_empty_transaction_is_rejected(opened: Ledger) -> None:
    """An empty transaction is not a transaction."""
    with pytest.raises(SequenceError):
        opened.append([])
    assert opened.next_seq == HEAD


def test_duplicate_transaction_is_rejected(opened: Ledger) -> None:
    """Appending the same transaction twice is rejected the second time."""
    opened.append(_good())
    with pytest.raises(SequenceError):
        opened.append(_good())
    assert committed(opened)[HEAD:] == _good()


def test_events_come_back_as_appended(backend: Ledger) -> None:
    """`events()` returns every appended event as an equal typed model, in order."""
    txs = history()
    append_all(backend, txs)
    back = list(backend.events())
    assert back == [e for tx in txs for e in tx]
    assert [type(e) for e in back] == [type(e) for tx in txs for e in tx]


def test_history_has_every_event_kind() -> None:
    """The histories the contract appends exercise every kind of event between them."""
    histories = (history(), control_history(), lifecycle_history())
    kinds = {type(e) for txs in histories for tx in txs for e in tx}
    assert kinds == set(EVENT_TYPES)


def test_lifecycle_events_come_back_as_appended(backend: Ledger) -> None:
    """Endowments, rent, liquidations, closes and capped bids are stored and read back intact."""
    txs = lifecycle_history()
    append_all(backend, txs)
    assert list(backend.events()) == [e for tx in txs for e in tx]
    assert backend.closed == {BOB}


def _close(account: str, first: int = HEAD) -> Tx:
    return [Close(**head(first, first), account=account, reason="bankrupt")]


AFTER_CLOSE: dict[str, EventBase] = {
    "paid": Pay(**head(HEAD + 1, HEAD + 1), src=ALICE, dst=BOB, amount=1),
    "pays": Pay(**head(HEAD + 1, HEAD + 1), src=BOB, dst=ALICE, amount=0),
    "rewarded": Reward(**head(HEAD + 1, HEAD + 1), src=ENVIRONMENT, dst=BOB, amount=1),
    "endowed": Endow(**head(HEAD + 1, HEAD + 1), src=ALICE, dst=BOB, amount=1),
    "bids": Bid(**head(HEAD + 1, HEAD + 1), account=BOB, primitive=1, state=0, amount=0),
    "reopened": Open(**head(HEAD + 1, HEAD + 1), account=BOB),
    "closed-again": _close(BOB, HEAD + 1)[0],
}
"""One event addressed to bob after bob's Close, per way of acting or receiving."""


@pytest.mark.parametrize("case", list(AFTER_CLOSE))
def test_closed_account_never_acts_again(opened: Ledger, case: str) -> None:
    """An event addressed to a closed account rejects its transaction whole, typed."""
    opened.append(_close(BOB))
    before = committed(opened)
    with pytest.raises(AccountClosed):
        opened.append([AFTER_CLOSE[case]])
    assert opened.next_seq == HEAD + 1
    assert committed(opened) == before


def test_control_events_come_back_with_their_vectors(backend: Ledger) -> None:
    """Orders and transitions (vector states and controls) are stored and read back intact."""
    txs = control_history()
    append_all(backend, txs)
    back = list(backend.events())
    assert back == [e for tx in txs for e in tx]
    transitions = backend.scan().filter(kind="transition").collect()
    assert transitions["next_x"].to_list() == [[0.1, 0.0], [0.2, 1.0]]


def test_events_from_start_is_the_suffix(backend: Ledger) -> None:
    """`events(start)` returns exactly the committed events with seq >= start."""
    txs = history()
    append_all(backend, txs)
    everything = [e for tx in txs for e in tx]
    assert list(backend.events(9)) == everything[9:]


def test_scan_is_totally_ordered_by_seq(backend: Ledger) -> None:
    """`scan()` has one row per event and its seq column is 0, 1, 2, ... in row order."""
    txs = history()
    append_all(backend, txs)
    assert backend.scan().collect()["seq"].to_list() == list(range(next_seq(txs)))


def test_next_seq_counts_appended_events(backend: Ledger) -> None:
    """The head moves by exactly the length of each appended transaction."""
    txs = history()
    heads = []
    for tx in txs:
        backend.append(tx)
        heads.append(backend.next_seq)
    assert heads == list(accumulate(len(tx) for tx in txs))


def test_empty_ledger_reads_nothing(backend: Ledger) -> None:
    """A fresh ledger has no events and no balances."""
    assert backend.next_seq == 0
    assert list(backend.events()) == []
    assert replay(backend) == {}


def _publish(ledger: Ledger, txs: list[Tx]) -> LiveBalances:
    """Publish `txs` through a bus into `ledger` and commit; the balances the bus kept live."""
    bus, live = Bus(ledger), LiveBalances()
    bus.subscribe_all(live.apply)
    for tx in txs:
        bus.publish(tx)
    ledger.flush()
    return live


def test_replay_equals_live(backend: Ledger) -> None:
    """Balances replayed from the ledger equal the live fold over the same transactions."""
    live = _publish(backend, history())
    assert replay(backend) == live.balances
    assert live.balances[ALICE] != 0


def test_replay_upto_equals_live_at_every_transaction(backend: Ledger) -> None:
    """`replay(ledger, upto=s)` equals the live balances right after the event s."""
    bus, live, seen = Bus(backend), LiveBalances(), []
    bus.subscribe_all(live.apply)
    for tx in history():
        bus.publish(tx)
        seen.append((tx[-1].seq, dict(live.balances)))
    backend.flush()
    assert [(s, replay(backend, upto=s)) for s, _ in seen] == seen
    assert len({str(b) for _, b in seen}) > 3


def test_replay_upto_inside_a_transaction(backend: Ledger) -> None:
    """`upto` cuts at an event, even in the middle of a transaction."""
    append_all(backend, [opening(0), _good()])
    assert replay(backend, upto=HEAD) == {ALICE: -3, BOB: 3}


def test_books_sum_to_zero(backend: Ledger) -> None:
    """Every transfer balances, so all balances together sum to zero."""
    append_all(backend, history())
    balances = replay(backend)
    assert sum(balances.values()) == 0
    assert any(balances.values())


def test_replay_equals_live_for_large_totals(backend: Ledger) -> None:
    """Replay is exact even when an account's total exceeds the int64 range."""
    big = (Pay, ALICE, BOB, 2**62)
    live = _publish(backend, [opening(0), moves(HEAD, big, big)])
    assert live.balances == {ALICE: -(2**63), BOB: 2**63}
    assert replay(backend) == live.balances
