"""Analyses over a large ledger: wall seconds, rows/s and peak memory per analysis.

The ledger is a Chain run of random bidders under CCV (about 7 events an auction), made once
with the round kernel into --ledger (reused if it is there). Each analysis runs in a fresh
spawned process so that its peak memory (the process's maximum resident set, minus that of
the same process before the analysis) is its own, --repeat times; the table gives the
medians. CPU seconds (user + system, every thread) are given beside the wall seconds: on a
shared machine the wall time also counts what other processes take from the cores, and the
load average over the run says how much that was. Targets: every analysis at 20M
rows/s or more, and memory well under three times the ledger's size on disk.

    python benchmarks/analyses_speed.py [--events 10000000] [--ledger benchmarks/out/ledger-10m]
                                        [--repeat 3]

Saves the measurements under docs/results/data/analyses-speed/ and writes the tables from
them (docs/results.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium

import argparse
import multiprocessing
import os
import resource
import subprocess
import time
from collections.abc import Callable
from typing import Any

import polars as pl
from generated import RESULTS, Table, frame, publish, read, save_data

EVENTS_PER_AUCTION = 7


def analyses() -> dict[str, Callable[[Any], Any]]:
    """Each analysis of the package, as a function of the ledger's lazy frame."""
    from analyses import auctions, income, inequality, wealth

    return {
        "wealth": wealth.wealth,
        "wealth_over_time": lambda e: wealth.wealth_over_time(e, 200),
        "returns": wealth.returns,
        "inequality": inequality.inequality,
        "income": income.income,
        "prices": auctions.prices,
        "winners": auctions.winners,
        "bids": auctions.bids,
    }


def measure(path: str, name: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak memory added in MiB) of one analysis, in this (fresh)
    process."""
    from ledger.disk import DiskLedger

    events = DiskLedger.open_existing(Path(path)).scan()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    analyses()[name](events)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, cpu_seconds, (peak - before) / 1024


def runs(path: str, repeat: int) -> list[dict[str, Any]]:
    """Each analysis measured `repeat` times (`measure`), each in a fresh spawned process;
    every analysis runs once per round, so a busy spell slows them alike."""
    spawn = multiprocessing.get_context("spawn")
    found = []
    for k in range(repeat):
        for name in analyses():
            with spawn.Pool(1) as pool:
                seconds, cpu, mib = pool.apply(measure, (path, name))
            found.append(
                {"analysis": name, "repeat": k, "seconds": seconds, "cpu": cpu, "mib": mib}
            )
    return found


def make_ledger(path: Path, events: int) -> None:
    """A Chain run of random bidders, `events` events or a few more, into `path`."""
    auctions = events // EVENTS_PER_AUCTION
    subprocess.run(
        [sys.executable, "-m", "cli", "simulate", "--task", "chain", "--bidder", "random",
         "--steps", str(auctions), "--concurrency", "256", "--out", str(path)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


ROWS_PER_S = 20e6
"""The target: rows/s of every analysis."""


def tables(data: Path) -> list[Table]:
    """Per analysis, the medians over the fresh processes, against the targets; from the
    saved measurements."""
    ledger = read(data, "ledger").row(0, named=True)
    medians = (
        read(data, "runs")
        .group_by("analysis", maintain_order=True)
        .agg(pl.col("seconds", "cpu", "mib").median())
    )
    rows = [
        {
            "analysis": name,
            "seconds": f"{seconds:.2f}",
            "CPU seconds": f"{cpu:.2f}",
            "rows/s": f"{ledger['events'] / seconds / 1e6:.1f}M",
            "peak memory added (MiB)": f"{mib:,.0f}",
            "x size on disk": f"{mib / ledger['on_disk_mib']:.2f}",
            f"target {ROWS_PER_S / 1e6:.0f}M rows/s": "met"
            if ledger["events"] / seconds >= ROWS_PER_S
            else "not met",
        }
        for name, seconds, cpu, mib in medians.iter_rows()
    ]
    setting = {
        "events": f"{ledger['events']:,}",
        "on disk (MiB)": f"{ledger['on_disk_mib']:,.0f}",
        "fresh processes per analysis (median of)": str(ledger["repeat"]),
        "cores": str(ledger["cores"]),
        "load average before": f"{ledger['load_before']:.1f}",
        "load average after": f"{ledger['load_after']:.1f}",
    }
    return [Table("analyses-speed", frame(rows)), Table("analyses-speed-ledger", frame([setting]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--ledger", type=Path, default=Path("benchmarks/out/ledger-10m"))
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs per analysis")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument("--name", default="analyses-speed", help="the saved data's directory")
    args = parser.parse_args()
    if not (args.ledger / "ledger").is_dir():
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        make_ledger(args.ledger, args.events)
    from ledger.disk import DiskLedger

    ledger_dir = args.ledger / "ledger"
    load = os.getloadavg()[0]
    found = runs(str(ledger_dir), args.repeat)
    ledger = {
        "events": DiskLedger.open_existing(ledger_dir).next_seq,
        "on_disk_mib": sum(p.stat().st_size for p in ledger_dir.iterdir()) / 2**20,
        "repeat": args.repeat,
        "cores": os.cpu_count(),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    frames = {"runs": pl.DataFrame(found), "ledger": pl.DataFrame([ledger])}
    data = save_data(args.results, args.name, "analyses-speed", frames)
    publish(data, args.results)


if __name__ == "__main__":
    main()
