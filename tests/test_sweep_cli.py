"""`market sweep` as a new user meets it: bad axes fail before anything runs, Ctrl-C is one
line, and Ray's --address means what its help says."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import as_in_a_terminal
from typer.testing import CliRunner

from cli import app
from simulation.sweep import NO_CLUSTER, results

FIXED = ["--set", "task=chain", "--set", "bidder=random"]
"""Cheap cells: Chain with fixed random bidders (no learners)."""
CONTROL = ["--set", "variant=control", "--set", "task=pendulum"]


def market(*args: str) -> list[str]:
    """The `market` command line with `args`, run as its console script does."""
    return [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", *args]


@pytest.mark.parametrize(
    ("axis", "needle"),
    [
        ([*FIXED, "--mechanisms", "ccv,vcg"], "unknown mechanism 'vcg'"),
        ([*FIXED, "--tasks", "chain,chian"], "unknown task 'chian'"),
        ([*FIXED, "--grid", "bidder=random,bogus"], "unknown bidder 'bogus'"),
        ([*FIXED, "--grid", "kernel=auto,bogus"], "unknown kernel 'bogus'"),
        ([*CONTROL, "--methods", "full,bogus"], "unknown method 'bogus'"),
        ([*CONTROL, "--tasks", "pendulum,chain"], "unknown control task 'chain'"),
    ],
)
def test_a_bad_axis_value_fails_before_any_run_or_folder(
    tmp_path: Path, axis: list[str], needle: str
) -> None:
    """A value only a cell of the grid has (a mechanism, task, bidder...) is found before the
    first run: one line naming it, exit 2, fast, and no sweep or cell folder made."""
    out = tmp_path / "bad"
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["sweep", "--set", "episodes=2000", *axis, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "to run" not in result.stdout  # nothing was planned, let alone run
    assert not out.exists()
    assert time.perf_counter() - start < 5


def test_ctrl_c_stops_a_sweep_in_one_line_and_the_same_command_continues_it(
    tmp_path: Path,
) -> None:
    """SIGINT to the sweep's process group (a Ctrl-C in its terminal) once one cell has
    finished, the third one then running (it takes a whole cell's time, so it cannot finish
    first): exit 130, one line saying how many runs finished, no worker traceback,
    no cell left running; rerunning the command finishes the sweep."""
    out = tmp_path / "s"
    command = market(
        "sweep", *FIXED, "--set", "episodes=5000", "--mechanisms", "ccv,bb,v",
        "--workers", "2", "--out", str(out),
    )  # fmt: skip
    sweep = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("results/**/part-0.parquet")) and sweep.poll() is None:
        assert time.monotonic() < deadline, "the sweep finished no cell in time"
        time.sleep(0.02)
    os.killpg(sweep.pid, signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert re.fullmatch(
        r"interrupted: [12] of 3 runs finished; rerun the same command to continue", lines[0]
    )
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert re.search(r"3 runs, [12] already finished, [12] to run", again.stdout)
    table = results(out)
    assert sorted(table["mechanism"]) == ["bb", "ccv", "v"] and table["audit_clean"].all()


def test_ray_address_auto_without_a_cluster_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--address auto with no Ray cluster running: exit 2, fast, one line saying how to start
    one or to leave --address out (Ray's own detection is made to find none)."""
    services = pytest.importorskip("ray._private.services")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", functools.cache(list))  # none here
    monkeypatch.setattr(services, "find_bootstrap_address", lambda _temp_dir: None)
    start = time.perf_counter()
    result = CliRunner().invoke(
        app,
        ["sweep", *FIXED, "--set", "episodes=3", "--backend", "ray", "--address", "auto",
         "--out", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {NO_CLUSTER}"
    assert "ray start --head" in NO_CLUSTER and "leave out --address" in NO_CLUSTER
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "s" / "runs").exists()


def test_ray_address_none_runs_ray_in_this_process(tmp_path: Path) -> None:
    """--address none (as the help used to say; local is the same) starts Ray in the process,
    as leaving --address out does, rather than failing as an address."""
    pytest.importorskip("ray")
    result = CliRunner().invoke(
        app,
        ["sweep", *FIXED, "--set", "episodes=3", "--mechanisms", "ccv", "--backend", "ray",
         "--address", "none", "--out", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert results(tmp_path / "s")["audit_clean"].all()


def test_the_sweep_help_says_what_address_does() -> None:
    """--help names local (the default), auto (a running cluster) and a cluster's address."""
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # no panel borders
    assert "none: start one" not in text
    for words in ("left out (or local)", "auto", "ray start --head", "ray://HOST:10001"):
        assert words in text, words
