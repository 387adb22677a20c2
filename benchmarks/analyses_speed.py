"""Analyses over a large ledger: wall seconds, rows/s and peak memory per analysis.

The ledger is a Chain run of random bidders under CCV (about 7 events an auction), made once
with the round kernel into --ledger (reused if it is there). Each analysis runs in a fresh
spawned process so that its peak memory (the process's maximum resident set, minus that of
the same process before the analysis) is its own. Targets (issue 6): every analysis at
20M rows/s or more, and memory well under three times the ledger's size on disk.

    python benchmarks/analyses_speed.py [--events 10000000] [--ledger benchmarks/out/ledger-10m]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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


def measure(path: str, name: str) -> tuple[float, float]:
    """(seconds, peak memory added in MiB) of one analysis, in this (fresh) process."""
    from ledger.disk import DiskLedger

    events = DiskLedger.open_existing(Path(path)).scan()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    analyses()[name](events)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, (peak - before) / 1024


def make_ledger(path: Path, events: int) -> None:
    """A Chain run of random bidders, `events` events or a few more, into `path`."""
    auctions = events // EVENTS_PER_AUCTION
    subprocess.run(
        [sys.executable, "-m", "cli", "simulate", "--task", "chain", "--bidder", "random",
         "--steps", str(auctions), "--concurrency", "256", "--out", str(path)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--ledger", type=Path, default=Path("benchmarks/out/ledger-10m"))
    args = parser.parse_args()
    if not (args.ledger / "ledger").is_dir():
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        make_ledger(args.ledger, args.events)
    from ledger.disk import DiskLedger

    ledger_dir = args.ledger / "ledger"
    rows = DiskLedger.open_existing(ledger_dir).next_seq
    on_disk = sum(p.stat().st_size for p in ledger_dir.iterdir()) / 2**20
    table = Table(
        title=f"analyses over {rows:,} events ({on_disk:,.0f} MiB on disk), one process each "
        "(targets: 20M rows/s, memory well under 3x the size on disk)"
    )
    for col in ("analysis", "seconds", "rows/s", "peak memory added (MiB)", "x size on disk"):
        table.add_column(col, justify="left" if col == "analysis" else "right")
    spawn = multiprocessing.get_context("spawn")
    for name in analyses():
        with spawn.Pool(1) as pool:
            seconds, mib = pool.apply(measure, (str(ledger_dir), name))
        table.add_row(
            name, f"{seconds:.2f}", f"{rows / seconds:,.0f}", f"{mib:,.0f}", f"{mib / on_disk:.2f}"
        )
    Console().print(table)


if __name__ == "__main__":
    main()
