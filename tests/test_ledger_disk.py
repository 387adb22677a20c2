"""The on-disk ledger: reopening, batches, torn tails, tamper detection, direct Polars reads."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest
from conftest import (
    ACCOUNTS,
    ALICE,
    BOB,
    SMALL_BATCH,
    Tx,
    append_all,
    committed,
    history,
    moves,
    next_seq,
    opening,
)

from ledger import schema
from ledger.disk import MANIFEST, DiskLedger
from ledger.errors import CorruptLedger, SequenceError, UnknownAccount
from ledger.events import ENVIRONMENT, EventBase, Pay, Reward
from ledger.storage import Storage, installed
from market.audit import audit

pytestmark = pytest.mark.usefixtures("small_chunks")

EVENTS = next_seq(history())
"""Events in the hand-made history (32, in five segments of at most two transactions)."""


def _filled(tmp_path: Path) -> Path:
    """A closed ledger directory holding the whole history in small batches."""
    path = tmp_path / "ledger"
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, history())
    return path


def _flat(txs: list[Tx]) -> list[EventBase]:
    return [e for tx in txs for e in tx]


def _more(first: int) -> Tx:
    """A transaction between accounts opened at the start of the history."""
    return moves(first, (Pay, ALICE, BOB, 2), (Reward, ENVIRONMENT, BOB, 1))


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.arrow"))


def _read(segment: Path) -> pa.Table:
    with ipc.open_file(segment) as reader:
        return reader.read_all()


def _manifest(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (path / MANIFEST).read_text().splitlines()]


# Reopening


def test_reopen_continues_the_sequence(tmp_path: Path) -> None:
    """A reopened ledger's head is the event after the last committed one."""
    path = _filled(tmp_path)
    ledger = DiskLedger(path)
    assert ledger.next_seq == EVENTS
    assert ledger.torn_tail == []


def test_reopen_remembers_accounts(tmp_path: Path) -> None:
    """A reopened ledger knows every account opened before, and no other."""
    ledger = DiskLedger(_filled(tmp_path))
    assert ledger.accounts == frozenset(ACCOUNTS)
    with pytest.raises(UnknownAccount):
        ledger.append(moves(EVENTS, (Pay, ALICE, "mallory", 1)))


def test_reopen_rejects_replayed_sequence(tmp_path: Path) -> None:
    """A reopened ledger rejects a transaction reusing committed sequence numbers."""
    ledger = DiskLedger(_filled(tmp_path))
    with pytest.raises(SequenceError):
        ledger.append(opening(0))


def test_reopen_and_append_keeps_one_chain(tmp_path: Path) -> None:
    """Events appended after a reopen follow the old ones and extend the same chain."""
    path = _filled(tmp_path)
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        ledger.append(_more(EVENTS))
    again = DiskLedger(path)
    assert list(again.events()) == [*_flat(history()), *_more(EVENTS)]
    assert again.next_seq == EVENTS + 2
    again.check_chain()


def test_close_commits_staged_events(tmp_path: Path) -> None:
    """Staged events are invisible until flushed, and closing the ledger commits them."""
    path = tmp_path / "ledger"
    ledger = DiskLedger(path, batch_events=SMALL_BATCH)
    ledger.append(opening(0)[:1])
    assert ledger.scan().collect().height == 0
    ledger.close()
    assert DiskLedger(path).next_seq == 1


def test_open_existing_requires_a_ledger(tmp_path: Path) -> None:
    """Opening an existing ledger where there is none is a CorruptLedger error."""
    with pytest.raises(CorruptLedger):
        DiskLedger.open_existing(tmp_path)


# Batches


def test_small_batches_make_several_segments(tmp_path: Path) -> None:
    """Each batch is one segment file with one manifest line naming it."""
    path = _filled(tmp_path)
    lines = _manifest(path)
    assert len(lines) >= 3
    assert [line["segment"] for line in lines] == [p.name for p in _segments(path)]


class _Threads(Storage):
    """The operating system's calls, each noted with the thread that made it."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str, str]] = []

    def write(self, file: BinaryIO, data: bytes) -> None:
        self.ops.append((threading.current_thread().name, "write", Path(file.name).name))
        super().write(file, data)

    def rename(self, src: Path, dst: Path) -> None:
        self.ops.append((threading.current_thread().name, "rename", dst.name))
        super().rename(src, dst)


def test_full_batches_are_committed_on_the_writer_thread_in_order(tmp_path: Path) -> None:
    """A full batch is written and committed on the writer thread, one segment after
    another; `close()` returns with every appended event committed."""
    with installed(_Threads()) as noted, DiskLedger(tmp_path, batch_events=SMALL_BATCH) as led:
        append_all(led, history())
    assert noted.ops and all(name.startswith("ledger-commit") for name, _, _ in noted.ops)
    renamed = [f for _, op, f in noted.ops if op == "rename"]
    assert renamed.count(MANIFEST) == 1 and len(_segments(tmp_path)) >= 3
    assert [f for f in renamed if f != MANIFEST] == [p.name for p in _segments(tmp_path)]
    assert list(DiskLedger(tmp_path).events()) == _flat(history())


def test_segments_hold_the_seq_range_the_manifest_records(tmp_path: Path) -> None:
    """Each segment holds exactly the contiguous seq range of its manifest line."""
    path = _filled(tmp_path)
    for line in _manifest(path):
        seqs = _read(path / str(line["segment"]))["seq"].to_pylist()
        first, last = line["first_seq"], line["last_seq"]
        assert isinstance(first, int) and isinstance(last, int)
        assert seqs == list(range(first, last + 1))


def test_transactions_never_split_across_segments(tmp_path: Path) -> None:
    """Every transaction lies whole in one segment, even one larger than a batch."""
    path = _filled(tmp_path)
    tables = [_read(p) for p in _segments(path)]
    txs = [set(t["tx"].to_pylist()) for t in tables]
    assert sum(len(t) for t in txs) == len(set().union(*txs)) == len(history())
    assert all(t["seq"][0].as_py() == t["tx"][0].as_py() for t in tables)
    assert max(t.num_rows for t in tables) > SMALL_BATCH


def _strings(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col(c).cast(pl.String) for c in schema.DICTIONARY)


def test_polars_reads_the_directory_directly(tmp_path: Path) -> None:
    """`pl.scan_ipc` over the segments gives one row per event, in seq order (without the
    optional groups' columns, which a ledger without an economy or observations does not
    store), its dictionary-encoded strings as categories."""
    path = _filled(tmp_path)
    frame = pl.scan_ipc(path / "seg-*.arrow").collect()
    assert frame.columns == schema.BASE_SCHEMA.names
    assert frame["seq"].to_list() == list(range(EVENTS))
    assert frame.schema["account"] == pl.Categorical
    read = DiskLedger(path).scan().select(schema.BASE_SCHEMA.names).collect()
    assert read.schema["account"] == pl.String
    assert _strings(frame).equals(read)


def _layouts(path: Path) -> list[bool]:
    """Per segment, in order: whether it stores its strings dictionary-encoded."""
    return [
        schema.encoded(ipc.open_file(pa.memory_map(str(p))).schema)
        for p in sorted(path.glob("seg-*.arrow"))
    ]


def test_segments_store_strings_encoded_and_read_as_strings_or_categories(
    tmp_path: Path,
) -> None:
    """Every segment stores `schema.DICTIONARY` encoded; a reader gets strings, or with
    `categories` (the audit) categories, the same values."""
    path = _filled(tmp_path)
    assert _layouts(path) == [True] * len(_layouts(path))
    ledger = DiskLedger(path)
    strings = ledger.scan().collect()
    categories = pl.concat(ledger.chunks(7, categories=True))
    assert all(strings.schema[c] == pl.String for c in schema.DICTIONARY)
    assert all(categories.schema[c] == pl.Categorical for c in schema.DICTIONARY)
    assert _strings(categories).equals(strings)


def test_a_ledger_of_plain_strings_reads_and_goes_on_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments written before the encoding (plain strings) read as before, and appending to
    such a ledger writes encoded segments after them: every reader sees one ledger."""
    path, txs = tmp_path / "ledger", history()
    half = len(txs) // 2
    with monkeypatch.context() as before:
        before.setattr(schema, "encode", lambda table: table)
        with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
            append_all(ledger, txs[:half])
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, txs[half:])
    layouts = _layouts(path)
    assert layouts == sorted(layouts) and True in layouts and False in layouts
    again = DiskLedger(path)
    assert list(again.events()) == _flat(txs)
    strings, categories = (pl.concat(again.chunks(7, categories=c)) for c in (False, True))
    assert strings.schema["account"] == pl.String
    assert categories.schema["account"] == pl.Categorical
    assert _strings(categories).equals(strings)
    assert audit(again).ok


def test_clean_ledger_passes_chain_and_audit(tmp_path: Path) -> None:
    """An untouched ledger re-hashes to its chain and audits clean."""
    ledger = DiskLedger(_filled(tmp_path))
    ledger.check_chain()
    assert audit(ledger).ok


# Torn tails

HALF_LINE = b'{"segment":"seg-000000000032.arrow","first_seq":32,"last_s'


def _half_line(path: Path) -> None:
    with open(path / MANIFEST, "ab") as f:
        f.write(HALF_LINE)


def test_half_written_manifest_line_is_reported(tmp_path: Path) -> None:
    """A half-written last manifest line is reported as a torn tail; committed events stand."""
    path = _filled(tmp_path)
    _half_line(path)
    ledger = DiskLedger(path)
    assert len(ledger.torn_tail) == 1 and MANIFEST in ledger.torn_tail[0]
    assert ledger.next_seq == EVENTS
    assert list(ledger.events()) == _flat(history())


def test_half_written_line_is_dropped_by_next_commit(tmp_path: Path) -> None:
    """The next commit after a half-written line leaves a manifest of whole lines only."""
    path = _filled(tmp_path)
    _half_line(path)
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        ledger.append(_more(EVENTS))
    again = DiskLedger(path)
    assert again.torn_tail == []
    assert len(_manifest(path)) == len(again.links)
    assert committed(again)[EVENTS:] == _more(EVENTS)
    again.check_chain()


def test_half_written_line_is_set_aside_under_torn(tmp_path: Path) -> None:
    """The bytes of a half-written manifest line are kept under `torn/`, not discarded."""
    path = _filled(tmp_path)
    _half_line(path)
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        ledger.append(_more(EVENTS))
    kept = [p.read_bytes() for p in (path / "torn").glob("*") if p.is_file()]
    assert any(HALF_LINE in data for data in kept)


def _uncommit_last(path: Path) -> tuple[str, int]:
    """Drop the last manifest line, as if the run died before committing its last batch."""
    lines = (path / MANIFEST).read_text().splitlines(keepends=True)
    (path / MANIFEST).write_text("".join(lines[:-1]))
    last = json.loads(lines[-1])
    return str(last["segment"]), int(last["first_seq"])


def _stray_copy(path: Path) -> tuple[str, int]:
    """A stray copy of a committed segment under a name no manifest line has."""
    name = "seg-000000000900.arrow"
    shutil.copy(_segments(path)[1], path / name)
    return name, EVENTS


def _stray_tmp(path: Path) -> tuple[str, int]:
    """A temporary segment left by a write that never reached its rename."""
    name = f"seg-{EVENTS:012d}.arrow.tmp"
    (path / name).write_bytes(_segments(path)[0].read_bytes()[:100])
    return name, EVENTS


STRAYS: dict[str, Callable[[Path], tuple[str, int]]] = {
    "uncommitted": _uncommit_last,
    "copy": _stray_copy,
    "tmp": _stray_tmp,
}


@pytest.mark.parametrize("case", list(STRAYS))
def test_stray_segment_is_reported(tmp_path: Path, case: str) -> None:
    """A segment file with no manifest line is reported; only committed events are read."""
    path = _filled(tmp_path)
    name, head = STRAYS[case](path)
    ledger = DiskLedger(path)
    assert len(ledger.torn_tail) == 1 and name in ledger.torn_tail[0]
    assert ledger.next_seq == head
    assert list(ledger.events()) == _flat(history())[:head]


@pytest.mark.parametrize("case", list(STRAYS))
def test_stray_segment_is_set_aside_by_next_commit(tmp_path: Path, case: str) -> None:
    """The next commit moves a stray segment under `torn/` and continues the sequence."""
    path = _filled(tmp_path)
    name, head = STRAYS[case](path)
    stray = (path / name).read_bytes()
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        ledger.append(_more(head))
    assert (path / "torn" / name).read_bytes() == stray
    again = DiskLedger(path)
    assert again.torn_tail == []
    assert list(again.events()) == [*_flat(history())[:head], *_more(head)]
    again.check_chain()


# Tampering


def _edit_amount(path: Path) -> Path:
    """Rewrite the first segment holding a payment with that payment's amount changed."""
    for segment in _segments(path):
        table = _read(segment)
        pays = pc.equal(table["kind"], "pay")
        if pc.any(pays).as_py():
            amount = pc.if_else(pays, pc.add(table["amount"], 1), table["amount"])
            table = table.set_column(table.schema.get_field_index("amount"), "amount", amount)
            options = ipc.IpcWriteOptions(compression="lz4")
            with ipc.new_file(segment, table.schema, options=options) as writer:
                writer.write_table(table)
            return segment
    raise AssertionError("no payment in the history")


def test_edited_event_breaks_the_chain(tmp_path: Path) -> None:
    """An amount edited in a stored segment makes `check_chain` raise CorruptLedger."""
    path = _filled(tmp_path)
    _edit_amount(path)
    ledger = DiskLedger(path)
    assert list(ledger.events()) != _flat(history())
    with pytest.raises(CorruptLedger):
        ledger.check_chain()


def test_audit_reports_edited_event_as_chain_violation(tmp_path: Path) -> None:
    """The audit of a ledger with an edited event reports the `chain` rule first."""
    path = _filled(tmp_path)
    _edit_amount(path)
    report = audit(DiskLedger(path))
    assert report.violation is not None
    assert report.violation.rule == "chain"


def test_append_to_edited_ledger_is_refused(tmp_path: Path) -> None:
    """A reopened ledger checks its chain before it takes a new transaction."""
    path = _filled(tmp_path)
    _edit_amount(path)
    with pytest.raises(CorruptLedger):
        DiskLedger(path).append(_more(EVENTS))


def test_audit_detects_batches_cut_from_the_end(tmp_path: Path) -> None:
    """Against the head recorded at the end of a run, a chain cut short is a `chain` violation."""
    path = _filled(tmp_path)
    recorded = DiskLedger(path).head
    name, _ = _uncommit_last(path)
    (path / name).unlink()
    report = audit(DiskLedger(path), expected_head=recorded)
    assert report.violation is not None and report.violation.rule == "chain"


def _truncate(path: Path) -> None:
    segment = _segments(path)[1]
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 2])


def test_truncated_segment_breaks_the_chain(tmp_path: Path) -> None:
    """A committed segment cut short under an open ledger fails `check_chain`."""
    ledger = DiskLedger(_filled(tmp_path))
    _truncate(ledger.path)
    with pytest.raises(CorruptLedger):
        ledger.check_chain()


def test_truncated_segment_is_a_chain_violation_on_reopen(tmp_path: Path) -> None:
    """Reopening a ledger whose committed segment was cut short audits as a `chain` violation."""
    path = _filled(tmp_path)
    _truncate(path)
    report = audit(DiskLedger(path))
    assert report.violation is not None and report.violation.rule == "chain"


@pytest.mark.parametrize("line", [1, -1])
@pytest.mark.parametrize("field", ["digest", "prev", "link"])
def test_edited_manifest_link_breaks_the_chain(tmp_path: Path, field: str, line: int) -> None:
    """Changing a hash recorded in `chain.jsonl` makes `check_chain` raise CorruptLedger."""
    path = _filled(tmp_path)
    lines = _manifest(path)
    lines[line][field] = "f" * 64
    (path / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in lines))
    ledger = DiskLedger(path)
    with pytest.raises(CorruptLedger):
        ledger.check_chain()
    report = audit(ledger)
    assert report.violation is not None and report.violation.rule == "chain"


def test_manifest_line_that_is_not_a_record_is_corrupt(tmp_path: Path) -> None:
    """A committed manifest line that is not a chain record makes open raise CorruptLedger."""
    path = _filled(tmp_path)
    text = (path / MANIFEST).read_text().splitlines(keepends=True)
    text[-1] = "not json\n"
    (path / MANIFEST).write_text("".join(text))
    with pytest.raises(CorruptLedger):
        DiskLedger(path)


def test_missing_segment_is_corrupt_on_open(tmp_path: Path) -> None:
    """A committed segment that is gone makes opening the ledger raise CorruptLedger."""
    path = _filled(tmp_path)
    _segments(path)[2].unlink()
    with pytest.raises(CorruptLedger):
        DiskLedger(path)
