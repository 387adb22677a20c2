"""The batch contract, run against every backend: a batch stores exactly what its transactions
appended one by one would store, and a bad batch is rejected whole with a typed error."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate, groupby, pairwise
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import ACCOUNTS, RUN, history
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from agents.fixed import make_bidder
from ledger import schema
from ledger.batch import (
    CODE,
    COLUMNS,
    MODELS,
    STRING_COLUMNS,
    EventBatch,
    _strings,
    check_batch,
    concat,
    numpy_type,
)
from ledger.disk import MANIFEST, DiskLedger, _encode
from ledger.errors import (
    InvalidEvent,
    LedgerError,
    SequenceError,
    UnbalancedTransaction,
    UnknownAccount,
)
from ledger.events import KIND, Bid, EventBase, Mint, Open, Pay, Reward
from ledger.store import Ledger, MemoryLedger
from ledger.transaction import Transaction
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

HEAD = len(ACCOUNTS) + 1
"""The ledger head after the hand-made opening transaction."""
L = TypeVar("L", bound=Ledger)
_KIND_CODE = {KIND[m]: i for i, m in enumerate(MODELS)}


# Builders


def batch_of(txs: Sequence[Transaction], strings: Sequence[str] = ()) -> EventBatch:
    """`txs` as one batch: string columns as codes into a table that starts with `strings`
    (then every other string in order of first use), kinds as `MODELS` codes, nulls as 0."""
    table = schema.to_table(txs)
    codes = {s: i for i, s in enumerate(dict.fromkeys(strings))}
    columns: dict[str, NDArray[Any]] = {}
    for name in COLUMNS:
        values = table[name].to_pylist()
        if name in STRING_COLUMNS:
            columns[name] = np.array(
                [0 if v is None else codes.setdefault(v, len(codes)) for v in values],
                dtype=np.int64,
            )
        else:
            dtype = numpy_type(name)
            columns[name] = np.array([dtype(0) if v is None else v for v in values], dtype=dtype)
    kind = np.array([_KIND_CODE[k] for k in table["kind"].to_pylist()], dtype=np.int8)
    return EventBatch(kind, columns, tuple(codes))


def txs_of(events: Sequence[Sequence[EventBase]]) -> list[Transaction]:
    """Event lists as (validated) transactions."""
    return [Transaction.of(e) for e in events]


@cache
def run_transactions(episodes: int = 6, concurrency: int = 3) -> tuple[Transaction, ...]:
    """The transactions of a small round-kernel run (every kind of event), read back."""
    config = RunConfig(
        mechanism="v", bidder="random", episodes=episodes, concurrency=concurrency, seed=1
    )
    task = make_task(config.task)
    society = Society.of(task, config.cloned)
    policy = make_bidder("random", task, society, config.gamma, np.random.default_rng(5))
    ledger = MemoryLedger()
    simulate(config, ledger, policy, kernel="rounds")
    events = list(ledger.events())
    return tuple(Transaction.of(list(g)) for _, g in groupby(events, key=lambda e: e.tx))


def twin(ledger: Ledger, tmp_path: Path) -> Ledger:
    """An empty ledger of the same backend (and disk batch size) as `ledger`."""
    if isinstance(ledger, DiskLedger):
        return DiskLedger(tmp_path / "twin", batch_events=ledger.batch_events)
    return MemoryLedger()


def frame(ledger: Ledger) -> pl.DataFrame:
    """Every committed event, after committing what is staged."""
    ledger.flush()
    return ledger.scan().collect()


def one_by_one(ledger: L, txs: Sequence[Transaction]) -> L:
    """`ledger` after appending every transaction of `txs` singly and committing."""
    for tx in txs:
        ledger.append(tx)
    ledger.flush()
    return ledger


def stored(path: Path) -> dict[str, bytes]:
    """Every segment file and the manifest of a disk ledger directory, by name."""
    return {
        p.name: p.read_bytes()
        for p in sorted(path.iterdir())
        if p.name == MANIFEST or p.name.startswith("seg-")
    }


def hand_made() -> tuple[Transaction, list[Transaction]]:
    """The hand-made history: its opening, and the rest (every kind but Open and RunStart)."""
    opening, *rest = txs_of(history())
    return opening, rest


# Appending a batch stores what the same transactions appended one by one store


def test_batch_appends_like_one_by_one(backend: Ledger, tmp_path: Path) -> None:
    """The hand-made history after its opening, as one batch, equals it appended singly."""
    opening, rest = hand_made()
    backend.append(opening)
    backend.append_batch(batch_of(rest))
    reference = one_by_one(twin(backend, tmp_path), [opening, *rest])
    assert backend.next_seq == reference.next_seq == HEAD + sum(map(len, rest))
    assert frame(backend).equals(frame(reference))
    assert frame(backend).height == reference.next_seq


def test_run_batches_append_like_one_by_one(backend: Ledger, tmp_path: Path) -> None:
    """A simulated run cut into several batches equals it appended singly, row for row."""
    opening, *rest = run_transactions()
    backend.append(opening)
    cuts = [0, 1, 9, 10, 40, len(rest)]
    for a, b in pairwise(cuts):
        backend.append_batch(batch_of(rest[a:b]))
    reference = one_by_one(twin(backend, tmp_path), run_transactions())
    assert frame(backend).equals(frame(reference))
    assert backend.next_seq == reference.next_seq
    assert backend.accounts == reference.accounts


def test_events_of_a_batch_come_back_as_typed_models(backend: Ledger) -> None:
    """`events()` after a batch returns the same typed events as the transactions hold."""
    opening, rest = hand_made()
    backend.append(opening)
    backend.append_batch(batch_of(rest))
    backend.flush()
    assert list(backend.events(HEAD)) == [e for tx in rest for e in tx.events()]


@pytest.mark.parametrize("batch_events", [1, 3, 4, 7, 50, 65_536])
def test_disk_segments_are_those_of_one_by_one(tmp_path: Path, batch_events: int) -> None:
    """Batches mixed with single transactions write the same segment bytes, manifest and
    chain head as the transactions appended singly, wherever a segment closes."""
    opening, *rest = run_transactions()
    batched = DiskLedger(tmp_path / "batched", batch_events=batch_events)
    batched.append(opening)
    batched.append(rest[0])
    first = batch_of(rest[1:30])
    batched.append_batch(first)
    spanned = {link.segment for link in batched.links}
    batched.append(rest[30])
    batched.append_batch(batch_of(rest[31:]))
    batched.close()
    single = DiskLedger(tmp_path / "single", batch_events=batch_events)
    one_by_one(single, run_transactions())
    single.close()
    assert stored(tmp_path / "batched") == stored(tmp_path / "single")
    assert batched.head == single.head
    assert [link.link for link in batched.links] == [link.link for link in single.links]
    if batch_events < len(first):
        assert len(spanned) > 1, "a segment boundary falls inside the first batch"
    again = DiskLedger(tmp_path / "batched")
    again.check_chain()
    assert again.head == single.head
    assert again.next_seq == single.next_seq
    assert frame(again).equals(frame(single))


def test_disk_segment_closes_inside_a_batch_at_a_transaction_end(tmp_path: Path) -> None:
    """With small segments a batch spreads over several, each closed by the first transaction
    that brings it to `batch_events` events, as singly appended transactions close them."""
    opening, rest = hand_made()
    ledger = DiskLedger(tmp_path / "batched", batch_events=4)
    ledger.append(opening)
    ledger.append_batch(batch_of(rest))
    ledger.close()
    expected, first, staged = [], 0, 0
    for tx in [opening, *rest]:
        staged += len(tx)
        if staged >= 4:
            expected.append((first, first + staged - 1))
            first, staged = first + staged, 0
    if staged:
        expected.append((first, first + staged - 1))
    assert [(link.first_seq, link.last_seq) for link in ledger.links] == expected
    assert sum(link.first_seq >= HEAD for link in ledger.links) > 2


# The batch form itself


def test_transactions_round_trip() -> None:
    """`EventBatch.transactions()` gives back the transactions the batch was made of."""
    txs = run_transactions()[1:]
    back = batch_of(txs).transactions()
    assert [t.header for t in back] == [t.header for t in txs]
    assert [t.events() for t in back] == [t.events() for t in txs]
    assert sum(map(len, back)) == sum(map(len, txs))


def test_transactions_round_trip_with_any_string_table() -> None:
    """Round-tripping does not depend on the order of the batch's string table."""
    txs = run_transactions()[1:]
    strings = tuple(reversed(batch_of(txs).strings))
    batch = batch_of(txs, strings=("unused", *strings))
    assert batch.strings[0] == "unused"
    assert [t.events() for t in batch.transactions()] == [t.events() for t in txs]


def test_to_table_is_the_table_of_its_transactions() -> None:
    """A batch's Arrow table is the table its transactions make (nulls where a kind has none)."""
    txs = run_transactions()[1:]
    assert batch_of(txs).to_table().equals(schema.to_table(txs))


def test_to_table_stores_the_bytes_of_its_transactions_table() -> None:
    """Stored, a batch's table is byte for byte the one its transactions make: the values
    under its nulls and its validity bitmaps too (a segment's hash reads them)."""
    txs = run_transactions()[1:]
    assert _encode(batch_of(txs).to_table()) == _encode(schema.to_table(txs))


@pytest.mark.parametrize(
    ("codes", "valid"),
    [
        ([2, 2, 2, 2], None),  # one value, every row: laid out directly
        ([2, 0, 2, 1], [True, False, True, False]),  # one value where carried
        ([0, 1, 2, 1], None),  # several values: taken
        ([0, 1, 2, 1], [False, True, True, False]),
        ([1, 1, 1, 1], [False, False, False, False]),
    ],
)
def test_string_columns_are_their_codes_taken(codes: list[int], valid: list[bool] | None) -> None:
    """A string column is its codes looked up in the strings, null where not carried."""
    names = pa.array(["a", "bb", "ccc"])
    mask = None if valid is None else np.array(valid)
    got = _strings(names, np.array(codes, dtype=np.int64), mask)
    expected = names.take(pa.array(codes, pa.int64(), mask=None if mask is None else ~mask))
    assert got.equals(expected)
    assert got.null_count == expected.null_count


def test_boundary_after_is_the_first_transaction_end_reaching_count() -> None:
    """`boundary_after(n)` is the end row of the first transaction ending at or past row n."""
    _, rest = hand_made()
    batch = batch_of(rest)
    ends = list(accumulate(map(len, rest)))
    for count in range(1, len(batch) + 2):
        expected = next((e for e in ends if e >= count), len(batch))
        assert batch.boundary_after(count) == expected


def test_split_at_a_boundary_keeps_whole_transactions() -> None:
    """Splitting at a transaction's first row gives the transactions before and from it."""
    _, rest = hand_made()
    batch = batch_of(rest)
    row = len(rest[0]) + len(rest[1])
    head, tail = batch.split(row)
    assert (len(head), len(tail)) == (row, len(batch) - row)
    assert [t.events() for t in head.transactions()] == [t.events() for t in rest[:2]]
    assert [t.events() for t in tail.transactions()] == [t.events() for t in rest[2:]]
    assert tail.first_seq == rest[2].first_seq


# concat


def test_concat_remaps_different_string_tables() -> None:
    """Batches whose string tables differ concatenate onto one table with codes re-mapped."""
    txs = run_transactions()[1:]
    a = batch_of(txs[:20])
    b = batch_of(txs[20:], strings=("zzz", *reversed(a.strings)))
    assert a.strings != b.strings
    both = concat([a, b])
    assert len(both) == len(a) + len(b)
    assert len(set(both.strings)) == len(both.strings)
    assert both.to_table().equals(schema.to_table(txs))
    assert [t.events() for t in both.transactions()] == [t.events() for t in txs]


def test_concat_of_three_tables_remaps_each() -> None:
    """Every batch's codes are re-mapped, not only the second's."""
    txs = run_transactions()[1:]
    a = batch_of(txs[:10])
    b = batch_of(txs[10:30], strings=tuple(reversed(a.strings)))
    c = batch_of(txs[30:], strings=("x", "y", *a.strings[1:], a.strings[0]))
    assert len({a.strings, b.strings, c.strings}) == 3
    assert concat([a, b, c]).to_table().equals(schema.to_table(txs))


def test_concat_of_one_table_keeps_it() -> None:
    """Batches sharing a string table concatenate without re-coding."""
    txs = run_transactions()[1:]
    strings = batch_of(txs).strings
    a, b = batch_of(txs[:25], strings=strings), batch_of(txs[25:], strings=strings)
    both = concat([a, b])
    assert both.strings == strings
    np.testing.assert_array_equal(both.columns["src"], batch_of(txs).columns["src"])
    assert both.to_table().equals(schema.to_table(txs))


def test_ledger_takes_batches_of_different_tables(backend: Ledger, tmp_path: Path) -> None:
    """Consecutive batches with different string tables are stored with the right strings."""
    opening, *rest = run_transactions()
    backend.append(opening)
    a = batch_of(rest[:30])
    backend.append_batch(a)
    backend.append_batch(batch_of(rest[30:], strings=("zzz", *reversed(a.strings))))
    assert frame(backend).equals(frame(one_by_one(twin(backend, tmp_path), run_transactions())))


# Rejection: typed, named, and whole


def _edit(
    batch: EventBatch,
    rows: slice | int,
    values: dict[str, Any],
    *,
    kind: type[EventBase] | None = None,
    new: str | None = None,
) -> EventBatch:
    """A copy of `batch` with `values` set at `rows` (a value of `new` in a string column
    is the code of string `new`, added to the table), and the kind changed to `kind`."""
    strings = batch.strings
    if new is not None and new not in strings:
        strings = (*strings, new)
    columns = {n: c.copy() for n, c in batch.columns.items()}
    for name, value in values.items():
        columns[name][rows] = strings.index(value) if isinstance(value, str) else value
    codes = batch.kind.copy()
    if kind is not None:
        codes[rows] = CODE[kind]
    return EventBatch(codes, columns, strings)


def _rows(batch: EventBatch, model: type[EventBase]) -> NDArray[np.intp]:
    return np.flatnonzero(batch.kind == CODE[model])


def _last(batch: EventBatch, model: type[EventBase]) -> int:
    """The row of the batch's last event of kind `model` (inside the last auction)."""
    return int(_rows(batch, model)[-1])


def _seq(batch: EventBatch, row: int) -> int:
    return int(batch.columns["seq"][row])


def _string(batch: EventBatch, name: str, row: int) -> str:
    return batch.strings[int(batch.columns[name][row])]


def _renumbered(batch: EventBatch, first: int) -> tuple[EventBatch, int]:
    shift = first - batch.first_seq
    columns = dict(batch.columns, seq=batch.columns["seq"] + shift, tx=batch.columns["tx"] + shift)
    return EventBatch(batch.kind, columns, batch.strings), first


def _hole(b: EventBatch) -> tuple[EventBatch, int]:
    r = _last(b, Mint)
    return _edit(b, slice(r, None), {"seq": b.columns["seq"][r:] + 1}), _seq(b, r) + 1


def _repeated(b: EventBatch) -> tuple[EventBatch, int]:
    r = _last(b, Mint)
    return _edit(b, r, {"seq": _seq(b, r) - 1}), _seq(b, r) - 1


def _tx_first(b: EventBatch) -> tuple[EventBatch, int]:
    return _edit(b, 0, {"tx": b.first_seq + 1}), b.first_seq


def _tx_inside(b: EventBatch) -> tuple[EventBatch, int]:
    r = _last(b, Mint)
    earlier = int(b.columns["tx"][_rows(b, Mint)[0]])
    return _edit(b, r, {"tx": earlier}), _seq(b, r)


def _header(
    name: str, value: Callable[[EventBatch, int], Any]
) -> Callable[[EventBatch], tuple[EventBatch, int]]:
    def make(b: EventBatch) -> tuple[EventBatch, int]:
        r = _last(b, Mint)
        new = value(b, r)
        return _edit(b, r, {name: new}, new=new if name == "run" else None), _seq(b, r)

    return make


def _set(model: type[EventBase], **values: Any) -> Callable[[EventBatch], tuple[EventBatch, int]]:
    def make(b: EventBatch) -> tuple[EventBatch, int]:
        r = _last(b, model)
        new = "mallory" if "mallory" in values.values() else None
        vals = {n: (_string(b, "src", r) if v is _SRC else v) for n, v in values.items()}
        return _edit(b, r, vals, new=new), _seq(b, r)

    return make


_SRC = object()
"""Stands for the row's own `src` in `_set` (a transfer to itself)."""


def _open_inside(b: EventBatch) -> tuple[EventBatch, int]:
    r = _last(b, Bid)
    return _edit(b, r, {"account": "carol"}, kind=Open, new="carol"), _seq(b, r)


def _opening_batch(b: EventBatch) -> tuple[EventBatch, int]:
    first = b.first_seq
    carol = Transaction((first, RUN, -1, -1, 0.0), [(Open, ("carol",))])
    rest = [Transaction((t.header[0] + 1, *t.header[1:]), t.body) for t in b.transactions()]
    return batch_of([carol, *rest]), first


@dataclass(frozen=True)
class Bad:
    """A fault: how to make a bad batch from a good one (and the seq it offends at)."""

    make: Callable[[EventBatch], tuple[EventBatch, int | None]]
    error: type[LedgerError]


BAD: dict[str, Bad] = {
    "duplicate-first-seq": Bad(lambda b: _renumbered(b, HEAD - 1), SequenceError),
    "restart-at-zero": Bad(lambda b: _renumbered(b, 0), SequenceError),
    "gap-before": Bad(lambda b: _renumbered(b, HEAD + 1), SequenceError),
    "hole-inside": Bad(_hole, SequenceError),
    "repeated-inside": Bad(_repeated, SequenceError),
    "tx-of-first-row": Bad(_tx_first, SequenceError),
    "tx-inside": Bad(_tx_inside, SequenceError),
    "header-run": Bad(_header("run", lambda b, r: "another-run"), InvalidEvent),
    "header-episode": Bad(
        _header("episode", lambda b, r: b.columns["episode"][r] + 1), InvalidEvent
    ),
    "header-step": Bad(_header("step", lambda b, r: b.columns["step"][r] + 1), InvalidEvent),
    "header-time": Bad(_header("time", lambda b, r: b.columns["time"][r] + 0.5), InvalidEvent),
    "negative-pay": Bad(_set(Pay, amount=-1), UnbalancedTransaction),
    "negative-mint": Bad(_set(Mint, amount=-3), UnbalancedTransaction),
    "negative-reward": Bad(_set(Reward, amount=-(2**63)), UnbalancedTransaction),
    "unopened-src": Bad(_set(Reward, src="mallory"), UnknownAccount),
    "unopened-dst": Bad(_set(Pay, dst="mallory"), UnknownAccount),
    "mint-to-self": Bad(_set(Mint, dst=_SRC), UnbalancedTransaction),
    "reward-to-self": Bad(_set(Reward, dst=_SRC), UnbalancedTransaction),
    "open-inside": Bad(_open_inside, InvalidEvent),
    "opening-transaction": Bad(_opening_batch, InvalidEvent),
    "empty": Bad(lambda b: (b.split(0)[0], None), SequenceError),
}
"""One fault per batch (an edited row is in the batch's last auction, so on disk earlier
segments of the good batch would already have been written had it been taken in parts)."""


def _good() -> EventBatch:
    return batch_of(hand_made()[1])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_batch_raises_its_typed_error(opened: Ledger, case: str) -> None:
    """Each fault raises the typed error the same fault raises in a single transaction."""
    bad, _ = BAD[case].make(_good())
    with pytest.raises(BAD[case].error):
        opened.append_batch(bad)


@pytest.mark.parametrize(
    "case",
    [c for c in BAD if c != "empty"],
)
def test_bad_batch_error_names_the_event(case: str) -> None:
    """The error's message names the sequence number of the offending event."""
    bad, seq = BAD[case].make(_good())
    assert seq is not None
    with pytest.raises(LedgerError) as err:
        check_batch(bad, HEAD, frozenset(ACCOUNTS))
    assert re.search(rf"(?<![\d-]){seq}(?!\d)", str(err.value)), str(err.value)


def test_empty_batch_error_says_empty() -> None:
    """An empty batch is refused as empty."""
    with pytest.raises(SequenceError, match="empty"):
        check_batch(_good().split(0)[0], HEAD, frozenset(ACCOUNTS))


def test_unknown_account_error_names_the_account() -> None:
    """A transfer from or to an account never opened is refused naming the account."""
    for case in ("unopened-src", "unopened-dst"):
        bad, _ = BAD[case].make(_good())
        with pytest.raises(UnknownAccount, match="'mallory'"):
            check_batch(bad, HEAD, frozenset(ACCOUNTS))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_batch_stages_nothing(opened: Ledger, tmp_path: Path, case: str) -> None:
    """A rejected batch leaves no event, no sequence number and no segment behind; the good
    batch then appends at the same sequence numbers."""
    before = frame(opened)
    files = stored(opened.path) if isinstance(opened, DiskLedger) else {}
    bad, _ = BAD[case].make(_good())
    with pytest.raises(LedgerError):
        opened.append_batch(bad)
    assert opened.next_seq == HEAD
    assert opened.accounts == frozenset(ACCOUNTS)
    assert frame(opened).equals(before)
    if isinstance(opened, DiskLedger):
        assert stored(opened.path) == files
    opened.append_batch(_good())
    opening, rest = hand_made()
    assert frame(opened).equals(frame(one_by_one(twin(opened, tmp_path), [opening, *rest])))


def test_good_batch_passes_the_check() -> None:
    """The batch every fault above is made from passes the check (the fault is the edit)."""
    check_batch(_good(), HEAD, frozenset(ACCOUNTS))
    ledger = MemoryLedger()
    ledger.append(hand_made()[0])
    ledger.append_batch(_good())
    assert ledger.next_seq == HEAD + len(_good())


def test_faults_reject_in_single_transactions_too(tmp_path: Path) -> None:
    """Each non-structural fault, appended as the same transactions singly, is refused too
    (the batch check mirrors the per-transaction rules)."""
    for case in ("negative-pay", "unopened-src", "unopened-dst", "mint-to-self", "reward-to-self"):
        bad, _ = BAD[case].make(_good())
        ledger = MemoryLedger()
        ledger.append(hand_made()[0])
        with pytest.raises(BAD[case].error):
            for tx in bad.transactions():
                ledger.append(tx)


def test_duplicate_batch_is_rejected(opened: Ledger) -> None:
    """Appending the same batch twice is rejected the second time."""
    opened.append_batch(_good())
    head = opened.next_seq
    with pytest.raises(SequenceError, match=f"duplicate sequence number {HEAD}"):
        opened.append_batch(_good())
    assert opened.next_seq == head
    assert frame(opened).height == head


def test_pay_to_itself_in_a_batch_is_allowed(opened: Ledger, tmp_path: Path) -> None:
    """A Pay from an account to itself passes, like a single transaction's."""
    good = _good()
    r = _last(good, Pay)
    batch = _edit(good, r, {"dst": int(good.columns["src"][r])})
    opened.append_batch(batch)
    row = frame(opened).filter(pl.col("seq") == _seq(good, r))
    assert row["kind"].to_list() == ["pay"]
    assert row["src"].to_list() == row["dst"].to_list() == [_string(good, "src", r)]
    reference = one_by_one(twin(opened, tmp_path), [hand_made()[0], *batch.transactions()])
    assert frame(opened).equals(frame(reference))


def test_mint_to_itself_is_caught_through_a_repeated_string() -> None:
    """A Mint whose src and dst are the same account under two codes is still refused."""
    good = _good()
    r = _last(good, Mint)
    twice = EventBatch(good.kind, good.columns, (*good.strings, _string(good, "src", r)))
    bad = _edit(twice, r, {"dst": len(twice.strings) - 1})
    assert _string(bad, "src", r) == _string(bad, "dst", r)
    with pytest.raises(UnbalancedTransaction):
        check_batch(bad, HEAD, frozenset(ACCOUNTS))


# A property: any mix of batches and single transactions stores the same


@st.composite
def plans(draw: st.DrawFn, n: int) -> list[tuple[int, int, bool, bool]]:
    """Consecutive (start, end, as a batch, reversed string table) pieces covering n items."""
    cuts = draw(st.lists(st.integers(1, n - 1), max_size=12, unique=True))
    bounds = [0, *sorted(cuts), n]
    return [(a, b, draw(st.booleans()), draw(st.booleans())) for a, b in pairwise(bounds)]


def _small_run() -> tuple[Transaction, ...]:
    return run_transactions(episodes=4, concurrency=2)


def _apply(ledger: Ledger, plan: list[tuple[int, int, bool, bool]]) -> None:
    opening, *rest = _small_run()
    ledger.append(opening)
    for a, b, as_batch, flip in plan:
        if as_batch:
            strings = tuple(reversed(batch_of(rest[a:b]).strings)) if flip else ()
            ledger.append_batch(batch_of(rest[a:b], strings=strings))
        else:
            for tx in rest[a:b]:
                ledger.append(tx)
    ledger.flush()


@cache
def _reference_frame() -> pl.DataFrame:
    return frame(one_by_one(MemoryLedger(), _small_run()))


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_random_mix_in_memory_stores_like_one_by_one(data: st.DataObject) -> None:
    """Any split of a run into batches and single transactions stores the same frame."""
    plan = data.draw(plans(len(_small_run()) - 1))
    ledger = MemoryLedger()
    _apply(ledger, plan)
    assert frame(ledger).equals(_reference_frame())
    assert ledger.next_seq == _reference_frame().height


@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data(), batch_events=st.integers(1, 60))
def test_random_mix_on_disk_stores_like_one_by_one(data: st.DataObject, batch_events: int) -> None:
    """Any split into batches and single transactions, with any segment size, writes the
    segments, manifest and chain head of the transactions appended singly."""
    plan = data.draw(plans(len(_small_run()) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        mixed = DiskLedger(path / "mixed", batch_events=batch_events)
        _apply(mixed, plan)
        single = one_by_one(DiskLedger(path / "single", batch_events=batch_events), _small_run())
        assert stored(path / "mixed") == stored(path / "single")
        assert mixed.head == single.head
        assert frame(mixed).equals(_reference_frame())
