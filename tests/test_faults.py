"""Deterministic fault injection under the disk ledger (after TigerBeetle's
simulator testing): at every write, fsync and rename a small run makes, fail it with ENOSPC
or EIO, tear it, or crash right after it, and check what survives (docs/ledger.md, "Fault
injection").

After each fault: the run stopped with a typed exception (OSError with its errno, or
`Crash`, the process dying); reopening the ledger keeps every committed batch and exactly the
batches whose manifest line fully landed; the audit is clean and reports a torn tail exactly
when the fault left one; `--resume` continues the run to a ledger that audits clean.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SMALL_BATCH, append_all, committed, history
from typer.testing import CliRunner, Result

from cli import app
from ledger.disk import MANIFEST, DiskLedger, Link
from ledger.errors import CorruptLedger
from ledger.storage import FAULTS, Crash, Fault, FaultyStorage, Op, installed
from market.audit import audit
from simulation import rundir
from simulation.config import Simulation, resolve
from simulation.runner import STORAGE_FAILED, prepare

EPISODES = 40
BATCH_EVENTS = 1024
"""Events per segment in these runs: a 40-episode run (5,662 events) commits 6 segments."""
RESUME_EPISODES = 5
MIN_RUN_FAULTS = 150
"""The fewest faults the run enumeration must try (its ops x `FAULTS`); docs/ledger.md,
"Fault injection", states the same floor (checked below)."""
MIN_RESUME_FAULTS = 48
"""The fewest faults the enumeration of a resume over a torn tail must try."""
ERRNO = {"enospc": errno.ENOSPC, "eio": errno.EIO}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module", autouse=True)
def small_batches() -> Iterator[None]:
    """Every DiskLedger these tests make (prepare's, --resume's) commits every
    `BATCH_EVENTS` events, so a small run spans several segments."""
    defaults = vars(DiskLedger)["__init__"].__kwdefaults__
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(defaults, "batch_events", BATCH_EVENTS)
        yield


def _sim(episodes: int = EPISODES) -> Simulation:
    return resolve(None, None, {"task": "chain", "bidder": "random", "episodes": episodes})


def _resume(run: Path) -> Path:
    """Continue `run` for `RESUME_EPISODES` episodes, through the real OS; check that the
    resumed run audits clean, with no torn tail left, and that summary.json records its head."""
    prepared = prepare(_sim(RESUME_EPISODES), None, run)
    finished = prepared.execute()
    assert finished.audited.ok, finished.audited.violation
    assert finished.ledger.torn_tail == []
    assert rundir.recorded_head(run) == finished.ledger.head
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Op], list[Link]]:
    """The run without faults: every storage operation it makes (the fault points) and the
    batches it commits. The run is deterministic, so a faulty run makes the same operations
    up to its fault."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with installed(FaultyStorage()) as counted:
        finished = prepare(_sim(), run).execute()
    assert finished.audited.ok
    return counted.ops, list(finished.ledger.links)


def _is(op: Op, name: str, file: str) -> bool:
    """Whether `op` is a `name` (write, fsync, ...) of the manifest (`file` MANIFEST, or
    its temporary name) or of a segment (`file` "seg-", any)."""
    found = Path(op.path).name
    named = found == file if file.startswith(MANIFEST) else found.startswith(file)
    return op.name == name and named


def _same(a: Op | None, b: Op) -> bool:
    """The same operation, in two run directories."""
    if a is None:
        return False
    return (a.name, Path(a.path).name, a.size) == (b.name, Path(b.path).name, b.size)


def _lands(op: Op) -> bool:
    """Whether `op` puts a whole manifest line in the manifest: an append, or the rename
    that makes the manifest with its first line."""
    return _is(op, "write", MANIFEST) or _is(op, "rename", MANIFEST)


def _landed(ops: list[Op], at: int, fault: Fault) -> int:
    """The manifest lines wholly written when `fault` hits operation `at`: each earlier one,
    and the faulted one if the process died only after it."""
    return sum(map(_lands, ops[:at])) + (fault == "crash" and _lands(ops[at]))


def _synced(ops: list[Op], at: int, fault: Fault) -> int:
    """The committed batches when `fault` hits operation `at`: those whose manifest line
    was written and synced (the fsync of the append, or of the directory the first line was
    renamed into)."""
    done = ops[: at + 1] if fault == "crash" else ops[:at]
    return sum(
        _is(op, "fsync", MANIFEST) or (op.name == "fsync_dir" and i > 0 and _lands(ops[i - 1]))
        for i, op in enumerate(done)
    )


def _fingerprint(run: Path) -> str:
    """Every file a fault left in `run` (name and bytes), as one digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(run)}:{len(data)}:".encode() + data)
    return digest.hexdigest()


def _check_fault(
    run: Path, ops: list[Op], links: list[Link], at: int, fault: Fault, seen: set[str]
) -> None:
    """Run with `fault` at operation `at`, then check the stop and the reopen; audit and
    resume the state it left on disk unless an earlier fault left the same bytes (`seen`:
    the runs are deterministic, so equal bytes audit and resume alike)."""
    with installed(FaultyStorage(at, fault, seed=at)) as faulty:
        prepared = prepare(_sim(), run)
        with pytest.raises(OSError if fault in ERRNO else Crash) as stopped:
            prepared.execute()
    assert _same(faulty.fired, ops[at])  # the same operations as the reference, up to it
    assert len(faulty.ops) == at + 1  # and none after: the run stopped there
    if isinstance(stopped.value, OSError):
        assert stopped.value.errno == ERRNO[fault]
    # The run never wrote summary.json: a failed run's figures are unknown and the next
    # writer (--resume) records the head; until then the audit is unanchored.
    assert rundir.read_summary(run) is None
    landed, synced = _landed(ops, at, fault), _synced(ops, at, fault)
    assert synced <= landed  # so keeping `landed` batches keeps every committed one
    ledger_dir = run / rundir.LEDGER
    if not (ledger_dir / MANIFEST).exists():  # died before its first commit: no ledger yet
        assert landed == 0
        with pytest.raises(CorruptLedger, match="no ledger here"):
            DiskLedger.open_existing(ledger_dir)
        with pytest.raises(CorruptLedger, match="not a run directory"):
            prepare(_sim(RESUME_EPISODES), None, run)
        return
    reopened = DiskLedger.open_existing(ledger_dir)
    assert reopened.links == links[:landed]  # every committed batch, nothing half-made
    begun = sum(_is(op, "write", "seg-") for op in ops[: at + 1])
    assert bool(reopened.torn_tail) == (begun > landed)  # a batch begun, never committed
    state = _fingerprint(run)
    if state in seen:
        return
    seen.add(state)
    report = audit(reopened, rundir.recorded_head(run))
    assert report.ok, report.violation
    assert report.torn_tail == reopened.torn_tail
    assert report.closed == (landed == len(links))
    _resume(run)
    resumed = DiskLedger.open_existing(ledger_dir)
    assert resumed.links[:landed] == links[:landed]
    assert resumed.links[landed].first_seq == reopened.next_seq
    assert (ledger_dir / "torn").is_dir() == (begun > landed)


def test_every_fault_of_a_run(reference: tuple[list[Op], list[Link]], tmp_path: Path) -> None:
    """Every storage operation of a 40-episode run x every fault kind."""
    ops, links = reference
    assert len(links) >= 5 and {op.name for op in ops} == {"write", "fsync", "rename", "fsync_dir"}
    tried, seen = 0, set[str]()
    for at, op in enumerate(ops):
        for fault in FAULTS:
            try:
                _check_fault(tmp_path / f"{at}-{fault}", ops, links, at, fault, seen)
            except AssertionError as e:
                raise AssertionError(f"{fault} at operation {at} ({op}): {e}") from e
            tried += 1
    assert tried == len(ops) * len(FAULTS) >= MIN_RUN_FAULTS
    assert len(seen) >= len(links)  # distinct states audited and resumed


def test_docs_state_the_enumeration() -> None:
    """docs/ledger.md states the floor this file asserts, and how the faults are counted."""
    docs = (Path(__file__).parents[1] / "docs" / "ledger.md").read_text(encoding="utf-8")
    section = docs[docs.index("## Fault injection") :]
    assert f"at least {MIN_RUN_FAULTS} faults" in section
    assert f"at least {MIN_RESUME_FAULTS} more" in section
    assert f"{EPISODES}-episode run" in section and f"every {BATCH_EVENTS:,} events" in section
    assert f"{RESUME_EPISODES} more episodes" in section


# A failed commit, retried by the same ledger ---------------------------------------------


def _history_ops(path: Path) -> list[Op]:
    with installed(FaultyStorage()) as counted, DiskLedger(path, batch_events=SMALL_BATCH) as led:
        append_all(led, history())
    return counted.ops


@pytest.mark.parametrize("fault", ["enospc", "eio"])
def test_a_failed_commit_is_retried_cleanly(tmp_path: Path, fault: Fault) -> None:
    """ENOSPC or EIO at any storage operation of a commit, then the same ledger commits
    again (the disk has room again; `close()` on leaving a `with` block does so): the
    ledger reopens whole (before the fix, a retry appended after half a manifest line, or
    repeated a whole one whose fsync had failed: the ledger no longer opened), with every
    event appended before the failure once, in order (those of the failed commit staged
    again and committed by the retry), and no torn tail."""
    ops = _history_ops(tmp_path / "counted")
    events = [e for tx in history() for e in tx]
    for at in range(len(ops)):
        where = f"{fault} at operation {at} ({ops[at]})"
        path = tmp_path / f"{at}"
        ledger = DiskLedger(path, batch_events=SMALL_BATCH)
        with installed(FaultyStorage(at, fault, seed=at)), pytest.raises(OSError):
            append_all(ledger, history())
        ledger.flush()
        try:
            reopened = DiskLedger.open_existing(path)
            reopened.check_chain()
        except CorruptLedger as e:
            raise AssertionError(f"{where}: {e}") from e
        assert reopened.torn_tail == [], where
        assert reopened.links == ledger.links, where  # what memory holds committed, is
        assert committed(reopened) == events[: reopened.committed], where
        assert reopened.committed == ledger.next_seq, where  # every appended event, once


# Faults while a resumed run sets its torn tail aside -------------------------------------


def _torn_run(tmp_path: Path, ops: list[Op]) -> Path:
    """A run that died writing its third manifest line: a half line and an uncommitted
    segment, which the next commit sets aside."""
    at = [i for i, op in enumerate(ops) if _is(op, "write", MANIFEST)][1]
    run = tmp_path / "torn"
    with installed(FaultyStorage(at, "torn", seed=at)), pytest.raises(Crash):
        prepare(_sim(), run).execute()
    ledger = DiskLedger.open_existing(run / rundir.LEDGER)
    assert len(ledger.links) == 2 and len(ledger.torn_tail) == 2  # the half line, the segment
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_every_fault_of_a_resume_over_a_torn_tail(
    reference: tuple[list[Op], list[Link]], tmp_path: Path
) -> None:
    """Every storage operation of a run resumed over a torn tail (setting the tail aside:
    the half line saved, the manifest rewritten, the segment moved; then its own commit) x
    every fault kind: the batches committed before survive, and so does each the resume
    committed; the audit is clean and a further --resume ends clean."""
    torn = _torn_run(tmp_path, reference[0])
    kept = DiskLedger.open_existing(torn / rundir.LEDGER).links
    with installed(FaultyStorage()) as counted:
        done = _resume(_copy(torn, tmp_path / "counted"))
    ops, links = counted.ops, DiskLedger.open_existing(done / rundir.LEDGER).links
    assert _is(ops[0], "write", f"{MANIFEST}.tail")  # the half line, kept under torn/
    assert _is(ops[3], "rename", MANIFEST)  # the manifest rewritten to its whole lines
    assert ops[5].name == "rename" and Path(ops[5].path).parent.name == "torn"
    tried, seen = 0, set[str]()
    for at, op in enumerate(ops):
        for fault in FAULTS:
            where = f"{fault} at operation {at} ({op})"
            run = _copy(torn, tmp_path / f"{at}-{fault}")
            with installed(FaultyStorage(at, fault, seed=at)) as faulty:
                prepared = prepare(_sim(RESUME_EPISODES), None, run)
                with pytest.raises(OSError if fault in ERRNO else Crash):
                    prepared.execute()
            assert _same(faulty.fired, op) and len(faulty.ops) == at + 1, where
            try:
                reopened = DiskLedger.open_existing(run / rundir.LEDGER)
            except CorruptLedger as e:
                raise AssertionError(f"{where}: {e}") from e
            appended = sum(_is(o, "write", MANIFEST) for o in ops[:at])
            appended += fault == "crash" and _is(op, "write", MANIFEST)
            assert reopened.links == links[: len(kept) + appended], where
            state = _fingerprint(run)
            if state not in seen:
                seen.add(state)
                report = audit(reopened, rundir.recorded_head(run))
                assert report.ok, f"{where}: {report.violation}"
                _resume(run)
            tried += 1
    assert tried == len(ops) * len(FAULTS) >= MIN_RESUME_FAULTS


# At the command line ---------------------------------------------------------------------


def _market(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _err(result: Result) -> str:
    return ANSI.sub("", result.stderr)


@pytest.mark.parametrize("fault", ["enospc", "eio"])
def test_market_simulate_stops_with_one_line(
    reference: tuple[list[Op], list[Link]], tmp_path: Path, fault: Fault
) -> None:
    """`market simulate` hit by ENOSPC or EIO mid-run exits non-zero with one line (no
    traceback) saying what was kept; `market audit` names the torn tail (unanchored: no
    summary.json yet); `--resume` continues to a run that audits clean."""
    ops = reference[0]
    at = [i for i, op in enumerate(ops) if _is(op, "write", MANIFEST)][2]
    run = tmp_path / "run"
    argv = ["simulate", "--task", "chain", "--bidder", "random", "--episodes", str(EPISODES)]
    with installed(FaultyStorage(at, fault, seed=at)):
        failed = _market(*argv, "--out", str(run))
    assert failed.exit_code == 2 and not isinstance(failed.exception, OSError)
    lines = _err(failed).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"[Errno {ERRNO[fault]}]" in lines[0] and f"{MANIFEST}'" in lines[0]  # the file
    assert "events committed" in lines[0] and f"--resume {run}" in lines[0]
    stopped = json.loads((run / rundir.SUMMARY).read_text())  # the committed head, anchored
    assert stopped["stopped"] == STORAGE_FAILED
    assert stopped["head"] == DiskLedger(run / rundir.LEDGER).head
    checked = _market("audit", str(run))
    assert checked.exit_code == 0, checked.stdout
    assert "torn tail:" in ANSI.sub("", checked.stdout)
    resumed = _market("simulate", "--resume", str(run), "--episodes", str(RESUME_EPISODES))
    assert resumed.exit_code == 0, _err(resumed)
    clean = _market("audit", str(run))
    assert clean.exit_code == 0 and "torn tail" not in ANSI.sub("", clean.stdout)
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert summary["audit"] == "clean" and summary["resumed_at"] > 0


def test_market_simulate_failing_before_any_commit_removes_the_run(tmp_path: Path) -> None:
    """A failure before the first commit keeps nothing: one line says so and the new run
    directory is removed (as after Ctrl-C), so `--out` can be given again."""
    run = tmp_path / "run"
    argv = ["simulate", "--task", "chain", "--bidder", "random", "--episodes", "2"]
    with installed(FaultyStorage(0, "enospc")):
        failed = _market(*argv, "--out", str(run))
    lines = _err(failed).strip().splitlines()
    assert failed.exit_code != 0 and len(lines) == 1, lines
    assert "[Errno 28]" in lines[0] and "before any event was committed" in lines[0]
    assert not run.exists()
    assert _market(*argv, "--out", str(run)).exit_code == 0
