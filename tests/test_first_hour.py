"""What a new user meets in the first hour: a run that stops short says why, `--help` shows
defaults in panels, Ctrl-C says what was kept, conflicting flags are refused, a log file gets
progress lines, and a failed audit shows no totals it did not finish adding up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import as_in_a_terminal
from typer.testing import CliRunner, Result

from cli import app
from ledger.disk import MANIFEST, DiskLedger
from market.kernel import EXTINCT
from simulation.config import resolve
from simulation.rundir import LEDGER, SUMMARY
from simulation.runner import INTERRUPTED

MARKET = Path(sys.executable).with_name("market")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HAYEK = (
    "simulate --task chain --mechanism ccv --learn --economy hayek --endowment 1.0 --rent 0.001 "
    "--primitives 12 --steps 500000 --seed 0 --out runs/hayek"
)


def market(*args: str, columns: int = 200) -> Result:
    """`market ARGS...` in-process, on a terminal `columns` wide."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def text(result: Result) -> str:
    return ANSI.sub("", result.output)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_run_that_stops_short_of_its_budget_says_why(cwd: Path) -> None:
    """The README's Hayek command goes extinct long before its 500,000 steps: the terminal
    and summary.json say so, with the steps run against the budget."""
    result = market(*HAYEK.split())
    assert result.exit_code == 0, result.output
    summary = json.loads((cwd / "runs/hayek" / SUMMARY).read_text())
    assert summary["stopped"] == EXTINCT
    assert summary["budget"] == {"steps": 500_000, "episodes": None}
    assert 0 < summary["steps"] < 500_000
    assert f"STOPPED EARLY after {summary['steps']:,} of 500,000 env steps" in text(result)


def test_a_run_that_spends_its_budget_does_not_say_it_stopped(cwd: Path) -> None:
    result = market("simulate", "--episodes", "50", "--out", "runs/full")
    assert result.exit_code == 0, result.output
    summary = json.loads((cwd / "runs/full" / SUMMARY).read_text())
    assert summary["stopped"] is None and summary["budget"]["episodes"] == 50
    assert "STOPPED" not in text(result) and "50 of 50" in text(result)


def test_simulate_help_shows_every_default_in_panels() -> None:
    help_ = text(market("simulate", "--help"))
    for panel in ("Task and budget", "Mechanism and bidders", "Learning", "Economy", "Control"):
        assert panel in help_
    for default in ("(chain", "(ccv)", "(1000", "(0.99)", "(auto)", "(full)", "(0.001)"):
        assert f"[default: {default}" in help_
    assert "<bool>" not in help_ and " ." not in help_


def test_a_resumed_run_refuses_flags_that_would_change_it(cwd: Path) -> None:
    assert market("simulate", "--episodes", "5", "--out", "runs/c").exit_code == 0
    for flags in (["--task", "bandit"], ["--mechanism", "v"], ["--preset", "chain"]):
        result = market("simulate", "--resume", "runs/c", *flags)
        assert result.exit_code == 2
        assert f"{flags[0]} cannot change a resumed run" in text(result)
        assert len(text(result).strip().splitlines()) == 1
    resumed = market("simulate", "--resume", "runs/c", "--episodes", "5")
    assert resumed.exit_code == 0 and "resuming runs/c at event" in text(resumed)


@pytest.mark.parametrize(
    ("flags", "wrong"),
    [
        (["--variant", "control", "--mechanism", "v"], "--mechanism"),
        (["--variant", "control", "--economy", "hayek"], "--economy"),
        (["--variant", "control", "--rent", "0.1"], "--rent"),
        (["--agents", "3"], "--agents"),
    ],
)
def test_a_flag_of_the_other_variant_is_refused(cwd: Path, flags: list[str], wrong: str) -> None:
    result = market("simulate", *flags, "--episodes", "2")
    assert result.exit_code == 2
    assert f"{wrong} is for the" in text(result) and "does not apply" in text(result)
    assert not (cwd / "runs").exists()


def run_market(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(MARKET), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=as_in_a_terminal,
    )


def test_ctrl_c_says_what_was_kept_and_the_run_goes_on(tmp_path: Path) -> None:
    """Interrupted mid-run: exit 130 and one line with the events committed and how to go
    on; the ledger audits clean and --resume continues it."""
    run = tmp_path / "big"
    args = ("simulate", "--bidder", "random", "--episodes", "10000000", "--concurrency", "256")
    proc = run_market(*args, "--out", str(run), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (run / LEDGER / MANIFEST).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    said = ANSI.sub("", err).strip()
    match = re.fullmatch(r"interrupted: ([0-9,]+) events committed; the run is not closed; "
                         r"continue with `market simulate --resume (\S+)`.*", said)  # fmt: skip
    assert match is not None, said
    assert "Traceback" not in err and Path(match[2]) == run
    summary = json.loads((run / SUMMARY).read_text())  # what was committed, anchored
    assert summary["stopped"] == INTERRUPTED and summary["events"] == int(match[1].replace(",", ""))
    assert summary["head"] == DiskLedger(run / LEDGER).head
    audited = subprocess.run([str(MARKET), "audit", str(run)], capture_output=True, text=True)
    assert audited.returncode == 0 and f"AUDIT CLEAN {match[1]} events" in audited.stdout
    resumed = market("simulate", "--resume", str(run), "--episodes", "20")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming {run} at event {match[1]}" in text(resumed)


def test_an_interrupted_run_that_committed_nothing_is_removed(cwd: Path) -> None:
    """Nothing is left that is neither a run nor absent: `--out` works again at once."""
    from simulation.runner import prepare

    sim = resolve(None, None, {"episodes": 10}, None)
    prepared = prepare(sim, cwd / "early")
    assert (cwd / "early").is_dir()
    assert "removed" in prepared.interrupted()
    assert not (cwd / "early").exists()
    assert market("simulate", "--episodes", "10", "--out", "early").exit_code == 0


def test_a_log_file_gets_plain_progress_lines(tmp_path: Path) -> None:
    proc = run_market(
        "simulate", "--bidder", "random", "--episodes", "40000", "--concurrency", "256",
        "--no-audit", "--out", str(tmp_path / "r"), cwd=tmp_path,
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line.startswith("progress: ")]
    assert lines, out
    assert re.match(r"progress: [0-9,]+ env steps, [0-9,]+ of 40,000 episodes, ", lines[0])


def test_a_failed_audit_shows_no_totals(cwd: Path) -> None:
    """The totals stop at the violation: a table of them would mislead."""
    assert market("simulate", "--episodes", "20", "--out", "runs/t").exit_code == 0
    summary = cwd / "runs/t" / SUMMARY
    data = json.loads(summary.read_text())
    summary.write_text(json.dumps({**data, "head": "0" * 64}))
    result = market("audit", "runs/t")
    assert result.exit_code == 1 and "AUDIT FAILED" in text(result)
    assert "credit by mechanism" not in text(result) and "lifecycle" not in text(result)


def test_a_control_run_audit_shows_no_auction_table(cwd: Path) -> None:
    args = ("--variant", "control", "--task", "integrator", "--bidder", "random")
    assert market("simulate", *args, "--episodes", "2", "--out", "runs/ctl").exit_code == 0
    result = market("audit", "runs/ctl")
    assert result.exit_code == 0
    assert "credit by mechanism" not in text(result) and "rewards in" not in text(result)


def test_a_killed_continuation_audits_clean_and_says_what_the_head_covers(
    tmp_path: Path,
) -> None:
    """summary.json's head is the finished run's; a --resume killed outright (no chance to
    record anything) appends past it. The chain passes through that head, so the audit is
    clean and says how many events the head vouches for, and that the last run was not
    closed. A head that is not in the chain at all still fails."""
    run = tmp_path / "r"
    assert (
        market("simulate", "--bidder", "random", "--episodes", "200", "--out", str(run)).exit_code
        == 0
    )
    recorded = json.loads((run / SUMMARY).read_text())["head"]
    proc = run_market("simulate", "--resume", str(run), "--episodes", "10000000", cwd=tmp_path)
    links = run / LEDGER / MANIFEST
    before = len(links.read_text().splitlines())
    deadline = time.monotonic() + 60
    while len(links.read_text().splitlines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    result = market("audit", str(run))
    verdict = next(line for line in text(result).splitlines() if line.startswith("AUDIT"))
    assert result.exit_code == 0 and verdict.startswith("AUDIT CLEAN"), verdict
    covered = re.search(r"the head kept vouches for the first ([0-9,]+) events", verdict)
    assert covered is not None and "the last run was not closed" in verdict
    kept = next(h for h in DiskLedger(run / LEDGER).tree.heads() if h.root == recorded)
    assert int(covered[1].replace(",", "")) == kept.events
    summary = run / SUMMARY
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "head": "f" * 64}))
    assert market("audit", str(run)).exit_code == 1


def test_an_audit_anchors_to_a_head_kept_elsewhere_or_says_it_is_unanchored(cwd: Path) -> None:
    """--head checks the ledger against a head the user kept (16 hex digits are enough);
    without it and without summary.json's head, the audit says nothing vouches for the
    ledger and exits 1 unless --unanchored."""
    finished = market("simulate", "--episodes", "30", "--out", "runs/a")
    head = re.search(r"ledger head\W+([0-9a-f]{64})", text(finished))
    assert head is not None
    assert market("audit", "runs/a", "--head", head[1][:16]).exit_code == 0
    wrong = market("audit", "runs/a", "--head", "0" * 64)
    assert wrong.exit_code == 1 and "chain: expected the recorded head 0000" in text(wrong)
    (cwd / "runs/a" / SUMMARY).unlink()
    bare = market("audit", "runs/a")
    assert bare.exit_code == 1 and "UNANCHORED" in text(bare) and "AUDIT CLEAN" in text(bare)
    assert market("audit", "runs/a", "--unanchored").exit_code == 0
    assert market("audit", "runs/a", "--head", head[1]).exit_code == 0
    bad = market("audit", "runs/a", "--head", "xyz")
    assert bad.exit_code == 2 and "at least 16 hex digits" in text(bad)


@pytest.mark.parametrize("field", ["events", "episodes", "mean_return"])
def test_summary_figures_that_the_ledger_does_not_bear_out_fail_the_audit(
    cwd: Path, field: str
) -> None:
    """summary.json's events, episodes and mean return are those of the ledger's last run
    (here a resumed one): a summary that says otherwise fails the audit, in one line."""
    assert market("simulate", "--episodes", "40", "--out", "runs/s").exit_code == 0
    assert market("simulate", "--resume", "runs/s", "--episodes", "30").exit_code == 0
    assert market("audit", "runs/s").exit_code == 0
    path = cwd / "runs/s" / SUMMARY
    stated = json.loads(path.read_text())
    assert stated["episodes"] == 30
    path.write_text(json.dumps({**stated, field: stated[field] + 1}))
    result = market("audit", "runs/s")
    assert result.exit_code == 1
    assert f"AUDIT FAILED summary: summary.json states {field} {stated[field] + 1}" in text(result)


def test_ctrl_c_inside_a_commit_reports_what_is_on_disk(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands after a batch's manifest line is written but before the ledger in
    memory counts it: the line, summary.json and the audit all agree with the disk."""
    from simulation.runner import prepare

    prepared = prepare(resolve(None, None, {"episodes": 400}, None), cwd / "cut")
    prepared.ledger.batch_events = 500
    fsyncs, real_fsync = 0, os.fsync

    def fsync_then_ctrl_c(fd: int) -> None:
        nonlocal fsyncs
        real_fsync(fd)
        fsyncs += 1
        if fsyncs == 4:  # a segment, its manifest line, a segment, its line: then Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        prepared.execute()
    monkeypatch.undo()
    said = prepared.interrupted()
    lines = (cwd / "cut" / LEDGER / MANIFEST).read_text().splitlines()
    on_disk = json.loads(lines[-1])
    events = on_disk["last_seq"] + 1
    assert f"interrupted: {events:,} events committed" in said
    summary = json.loads((cwd / "cut" / SUMMARY).read_text())
    assert summary["head"] == DiskLedger(cwd / "cut" / LEDGER).head
    assert summary["events"] == events
    audited = market("audit", str(cwd / "cut"))
    assert audited.exit_code == 0 and f"AUDIT CLEAN {events:,} events" in text(audited)
