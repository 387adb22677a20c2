"""The ledger at scale: the streaming audit, bounded memory, a kill during the closing audit,
`--no-audit`, and a resume that reads only the ledger's tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pytest
from test_audit import falsify, first_seq
from typer.testing import CliRunner

from agents.fixed import make_bidder
from cli import app
from ledger.disk import DiskLedger
from ledger.replay import replay
from ledger.store import Ledger, MemoryLedger
from market.audit import AuditReport, audit, audit_frame
from market.economy import Economy, EconomyConfig
from market.run import Continuation, RunConfig, simulate
from market.society import Society
from market.tasks import make_task
from simulation import rundir
from simulation.runner import NOT_AUDITED, PENDING

L = TypeVar("L", bound=Ledger)
ROOT = Path(__file__).resolve().parents[1]
SIZES = (13, 200, 10**9)
"""Chunk sizes (events): about an auction, tens of auctions, all."""


def fixed_run(ledger: L, **settings: object) -> L:
    """A fixed-bidder run into `ledger` (random bidders unless told otherwise)."""
    config = RunConfig.model_validate({"bidder": "random", "episodes": 5, "seed": 4, **settings})
    task = make_task(config.task)
    society = Society.of(task, config.cloned)
    economy = Economy(config.economy, society) if config.economy is not None else None
    policy = make_bidder(
        config.bidder, task, society, config.gamma, np.random.default_rng(4), economy=economy
    )
    simulate(config, ledger, policy, economy=economy)
    return ledger


def same(a: AuditReport, b: AuditReport) -> None:
    """Two audits with the same verdict and the same totals."""
    assert a.violation == b.violation
    for name in ("events", "auctions", "episodes", "rewards_in", "minted", "opens", "closes",
                 "endowed", "rent", "liquidated", "closing_checked", "closed"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    key = sorted(a.per_mechanism, key=str) == sorted(b.per_mechanism, key=str)
    assert key, (a.per_mechanism, b.per_mechanism)


def ledgers() -> dict[str, pl.DataFrame]:
    """Clean ledgers of every shape the audit carries state across, and falsified ones."""
    economy = EconomyConfig(endowment=1.0, rent=0.01)
    frames = {
        "v, 5 at once": fixed_run(MemoryLedger(), mechanism="v", concurrency=5),
        "bb, solitary": fixed_run(MemoryLedger(), mechanism="bb", cloned=False),
        "economy": fixed_run(MemoryLedger(), economy=economy, episodes=20),
    }
    two = fixed_run(MemoryLedger(), mechanism="ccv", concurrency=3)
    frames["two runs"] = fixed_run(two, mechanism="fp", concurrency=3)
    out = {name: ledger.scan().collect() for name, ledger in frames.items()}
    v = out["v, 5 at once"]
    pay = first_seq(v, "pay", pl.col("step") == 3)
    out["price falsified"] = falsify(v, pay, amount=1)
    last_bid = int(v.filter(kind="bid")["seq"][-1])
    out["late bid falsified"] = falsify(v, last_bid, amount=10**9)
    statement = first_seq(v, "balance")
    out["statement falsified"] = falsify(v, statement, amount=3)
    end = first_seq(v, "episode_end")
    running = v.filter((pl.col("kind") == "bid") & (pl.col("seq") > end))["episode"][0]
    so_far = v.filter((pl.col("episode") == running) & (pl.col("seq") < end))
    rewards = so_far.filter(pl.col("kind") == "reward")
    signed = (
        pl.when(pl.col("src") == "environment").then(pl.col("amount")).otherwise(-pl.col("amount"))
    )
    told = {  # the end's own figures agree with its (new) episode: only the later auction errs
        "episode_return": int(rewards.select(signed.sum()).item() or 0),
        "steps": so_far.filter(pl.col("kind") == "allocate").height,
    }
    out["episode ended early"] = falsify(v, end, episode=int(running), **told)
    return out


LEDGERS = ledgers()


@pytest.mark.parametrize("name", list(LEDGERS))
def test_the_audit_does_not_depend_on_how_the_ledger_is_chunked(name: str) -> None:
    """Carried state (balances, lives, running episodes, the last transaction) makes every
    chunking give the verdict and totals of the whole ledger read as one chunk."""
    frame = LEDGERS[name]
    whole = audit_frame(frame, chunk_events=10**9)
    assert whole.ok == ("falsified" not in name and "early" not in name), whole.violation
    for size in SIZES:
        same(audit_frame(frame, chunk_events=size), whole)


def test_a_disk_ledger_audits_the_same_by_segments_and_by_events(tmp_path: Path) -> None:
    """On disk, chunks are runs of whole segments (sliced when a segment is larger)."""
    ledger = fixed_run(DiskLedger(tmp_path, batch_events=50), mechanism="v", concurrency=4)
    whole = audit(ledger, chunk_events=10**9)
    assert whole.ok and whole.events == ledger.next_seq
    for size in (13, 50, 120):
        same(audit(ledger, chunk_events=size), whole)


def test_the_audit_reports_its_progress_chunk_by_chunk(tmp_path: Path) -> None:
    """`progress` sees the events audited so far after each chunk, up to the whole ledger
    (what `market audit` and the closing audit show as a progress bar)."""
    ledger = fixed_run(DiskLedger(tmp_path, batch_events=100), mechanism="ccv")
    seen: list[int] = []
    assert audit(ledger, chunk_events=100, progress=seen.append).ok
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == ledger.next_seq


def test_an_auction_after_its_episodes_end_breaks_sequence() -> None:
    """Streaming, the audit forgets an episode at its end, so it names any later auction of
    it (whichever chunk it falls in)."""
    frame = LEDGERS["episode ended early"]
    for size in SIZES:
        report = audit_frame(frame, chunk_events=size)
        assert report.violation is not None and report.violation.rule == "sequence"


PEAK = """
import resource, sys
from ledger.disk import DiskLedger
from market.audit import audit
report = audit(DiskLedger(sys.argv[1]), chunk_events=int(sys.argv[2]))
assert report.ok, report.violation
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(ledger: Path, chunk: int) -> int:
    """The peak resident memory (KiB) of a fresh process that audits `ledger`."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(ledger), str(chunk)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return int(done.stdout.split()[-1])


def test_audit_memory_does_not_grow_with_the_ledgers_length(tmp_path: Path) -> None:
    """Auditing 20 segments peaks where 2 do: the ledger is read a chunk at a time. (Held
    whole, 20 segments of 40,000 events would take ~200 MB more.)"""
    peaks = []
    for segments in (2, 20):
        ledger = DiskLedger(tmp_path / str(segments), batch_events=40_000)
        episodes = segments * 40_000 // 130 + 300
        fixed_run(ledger, episodes=episodes, concurrency=64, mechanism="ccv")
        assert len(ledger.links) >= segments
        peaks.append(peak_kib(ledger.path, 40_000))
    assert peaks[1] - peaks[0] < 40 * 1024, peaks


KILLED = """
import os, signal, sys
import market.audit as audit
audit.CHUNK_EVENTS = 100
checked = audit._audit_chunk
def killing(df, carry, report):
    if carry.at:  # the second chunk: SIGKILL, as the OOM killer or a power cut would
        os.kill(os.getpid(), signal.SIGKILL)
    checked(df, carry, report)
audit._audit_chunk = killing
from cli import main
sys.argv = ["market", *sys.argv[1:]]
main()
"""


def test_a_run_killed_during_its_closing_audit_loses_nothing(tmp_path: Path) -> None:
    """The ledger is committed and its head recorded before the closing audit starts, so a
    kill during the audit leaves a run that `market audit` checks again, clean."""
    run = tmp_path / "run"
    args = ["simulate", "--bidder", "random", "--episodes", "30", "--out", str(run)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, *args], capture_output=True, text=True, cwd=ROOT
    )
    assert killed.returncode == -9, killed.stderr
    summary = json.loads((run / rundir.SUMMARY).read_text())
    ledger = rundir.open_run_ledger(run)
    assert summary["audit"] == PENDING and summary["head"] == ledger.head
    assert not ledger.torn_tail
    result = CliRunner().invoke(app, ["audit", str(run)])
    assert result.exit_code == 0 and "AUDIT CLEAN" in result.output, result.output
    assert f"{ledger.next_seq:,} events" in result.output


def test_no_audit_skips_the_closing_audit_and_says_so(tmp_path: Path) -> None:
    """--no-audit: the summary says the run was not audited; `market audit` does it later."""
    run = tmp_path / "run"
    made = CliRunner().invoke(
        app, ["simulate", "--bidder", "random", "--episodes", "20", "--no-audit", "--out", str(run)]
    )
    assert made.exit_code == 0, made.output
    assert "NOT AUDITED" in made.output and "AUDIT CLEAN" not in made.output
    assert json.loads((run / rundir.SUMMARY).read_text())["audit"] == NOT_AUDITED
    later = CliRunner().invoke(app, ["audit", str(run)])
    assert later.exit_code == 0 and "AUDIT CLEAN" in later.output


def whole_ledger_continuation(ledger: Ledger) -> tuple[dict[str, int], int, float]:
    """What a continuation was before it read only the tail: a fold of the whole ledger."""
    frame = ledger.scan()
    episode, time_ = frame.select(pl.col("episode").max(), pl.col("time").max()).collect().row(0)
    return {a: v for a, v in replay(ledger).items() if v}, max(episode, -1) + 1, float(time_)


@pytest.mark.parametrize("closed", [True, False])
def test_a_continuation_reads_the_tail_and_equals_the_whole_ledgers_fold(
    tmp_path: Path, closed: bool
) -> None:
    """A closed run continues from its closing statements and the last segments; an unclosed
    one (killed mid-run) replays its balances chunk by chunk; both equal the whole fold."""
    ledger = fixed_run(DiskLedger(tmp_path, batch_events=200), episodes=60, concurrency=4)
    if not closed:  # cut the closing transaction off, as a kill before it would
        with open(tmp_path / "chain.jsonl", encoding="utf-8") as f:
            links = f.readlines()
        (tmp_path / "chain.jsonl").write_text("".join(links[:-1]), encoding="utf-8")
        ledger = DiskLedger(tmp_path)
        assert ledger.scan().filter(kind="run_end").collect().is_empty()
    read: list[int] = []
    backwards = ledger.backwards

    def counted(columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        for frame in backwards(columns):
            read.append(frame.height)
            yield frame

    ledger.backwards = counted  # type: ignore[method-assign]
    found = Continuation.of(ledger)
    balances, episode, time_ = whole_ledger_continuation(ledger)
    assert {a: v for a, v in found.balances.items() if v} == balances
    assert (found.next_episode, found.time) == (episode, time_)
    assert len(read) <= 3 < len(ledger.links)  # the tail only, not every segment


def test_resume_continues_a_long_run_from_its_tail(tmp_path: Path) -> None:
    """`market simulate --resume RUN` on a learning run: the continued ledger audits clean."""
    run = tmp_path / "run"
    first = ["simulate", "--learn", "--steps", "3000", "--seed", "1", "--out", str(run)]
    assert CliRunner().invoke(app, first).exit_code == 0
    more = CliRunner().invoke(app, ["simulate", "--resume", str(run), "--steps", "2000"])
    assert more.exit_code == 0 and "AUDIT CLEAN" in more.output, more.output
    episodes = rundir.open_run_ledger(run).scan().filter(kind="episode_start")
    numbers = episodes.select("episode").collect()["episode"]
    assert numbers.is_sorted() and numbers.n_unique() == numbers.len()
    assert os.path.isfile(run / rundir.SUMMARY)
