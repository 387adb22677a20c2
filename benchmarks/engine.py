"""Engine speed: end-to-end ledger events/s, auctions/s, audit and replay events/s.

Each figure is printed next to this machine's raw SimPy event rate (a bare single-process
`env.timeout` loop), measured in the same run, as a ratio. The workload is a no-learning
cloned CCV Chain run with truthful bidders and the on-disk ledger, one episode at a time
(the episode kernel) and with many at once (the round kernel; the same ledger).

    python benchmarks/engine.py [--episodes 20000] [--repeats 3] [--concurrency 1,32,256]
                                [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import simpy
from rich.console import Console
from rich.table import Table

from agents.fixed import make_bidder
from ledger.disk import DiskLedger
from ledger.replay import replay
from market.audit import audit
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

COMPONENTS = {
    "market/kernel.py": "kernel (auction loop, event records)",
    "market/rounds.py": "round kernel (settle and build a round's columns)",
    "ledger/batch.py": "batch checks and Arrow build",
    "ledger/transaction.py": "ledger append checks",
    "ledger/store.py": "ledger append checks",
    "ledger/schema.py": "columnar batch build (records -> Arrow)",
    "ledger/disk.py": "segment write, hash, fsync",
    "ledger/replay.py": "live balances (bus subscriber)",
    "market/bus.py": "bus publish",
    "market/mechanisms.py": "mechanism settlement",
    "agents/fixed.py": "policy (bids)",
    "ledger/units.py": "bid quantisation",
    "market/tasks.py": "task transitions",
    "simpy/": "SimPy scheduling",
    "pyarrow/": "Arrow (build, sort, IPC)",
}


def raw_simpy_rate(n: int = 1_000_000) -> float:
    """Events per second of a bare single-process `env.timeout` loop."""
    env = simpy.Environment()

    def loop(env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        for _ in range(n):
            yield env.timeout(1)

    env.process(loop(env))
    start = time.perf_counter()
    env.run()
    return n / (time.perf_counter() - start)


def run_chain(path: Path, episodes: int, concurrency: int = 1) -> tuple[float, int, int]:
    """(seconds, events, auctions) of a cloned CCV Chain run into an on-disk ledger."""
    config = RunConfig(
        task="chain",
        mechanism="ccv",
        bidder="truthful",
        episodes=episodes,
        concurrency=concurrency,
    )
    task = make_task(config.task)
    society = Society.of(task, config.cloned)
    policy = make_bidder("truthful", task, society, config.gamma, np.random.default_rng(0))
    with DiskLedger(path) as ledger:
        start = time.perf_counter()
        summary = simulate(config, ledger, policy)
        seconds = time.perf_counter() - start
    auctions = DiskLedger.open_existing(path).scan().filter(kind="allocate").collect().height
    return seconds, summary.events, auctions


def profile_shares(path: Path, episodes: int) -> list[tuple[str, float]]:
    """Share of own (tottime) profile time per component of the end-to-end run."""
    profiler = cProfile.Profile()
    profiler.runcall(run_chain, path, episodes)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    shares: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.items():
        name = next((v for k, v in COMPONENTS.items() if k in filename), "other (Python, NumPy)")
        shares[name] = shares.get(name, 0.0) + tottime
    total = sum(shares.values())
    return sorted(((k, v / total) for k, v in shares.items()), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--concurrency", default="1,32,256", help="episodes at once, comma-separated"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the run")
    args = parser.parse_args()
    console = Console()
    widths = [int(c) for c in args.concurrency.split(",")]
    rates: dict[str, list[float]] = {k: [] for k in ("raw", "audit", "replay")}
    rates |= {f"{kind}-{c}": [] for c in widths for kind in ("e2e", "auctions")}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):  # interleaved, so machine noise hits every figure alike
            rates["raw"].append(raw_simpy_rate())
            for c in widths:
                path = Path(tmp) / f"ledger-{k}-{c}"
                seconds, events, auctions = run_chain(path, args.episodes, c)
                rates[f"e2e-{c}"].append(events / seconds)
                rates[f"auctions-{c}"].append(auctions / seconds)
            ledger = DiskLedger.open_existing(path)
            start = time.perf_counter()
            report = audit(ledger)
            rates["audit"].append(events / (time.perf_counter() - start))
            start = time.perf_counter()
            balances = replay(ledger)
            rates["replay"].append(events / (time.perf_counter() - start))
            assert report.ok and sum(balances.values()) == 0
        size = sum(p.stat().st_size for p in path.iterdir())
        med = {k: statistics.median(v) for k, v in rates.items()}
        table = Table(
            title=f"engine: cloned CCV Chain, truthful, {args.episodes:,} episodes, "
            f"median of {args.repeats}"
        )
        for col in ("measure", "rate", "x raw SimPy", "target"):
            table.add_column(col, justify="left" if col == "measure" else "right")
        table.add_row("raw SimPy (env.timeout loop)", f"{med['raw']:,.0f} events/s", "1.00", "")
        rows = [
            (f"{kind}-{c}", f"{label}, {c} at once ({'rounds' if c > 1 else 'episodes'})", target)
            for c in widths
            for kind, label, target in (
                ("e2e", "end to end (ledger events)", ">= 0.25"),
                ("auctions", "auctions", ""),
            )
        ]
        for key, name, target in (
            *rows,
            ("audit", "audit (events)", ">= 3"),
            ("replay", "replay (events)", ">= 3"),
        ):
            table.add_row(name, f"{med[key]:,.0f} /s", f"{med[key] / med['raw']:.2f}", target)
        console.print(table)
        console.print(
            f"{events:,} events, {auctions:,} auctions, {events / auctions:.1f} events per "
            f"auction, {size / events:.1f} bytes per event on disk"
        )
        if args.profile:
            shares = profile_shares(Path(tmp) / "profiled", max(args.episodes // 4, 1))
            prof = Table(title="where an event's cost goes (share of profiled own time)")
            prof.add_column("component")
            prof.add_column("share", justify="right")
            for name, share in shares:
                prof.add_row(name, f"{share:.0%}")
            console.print(prof)


if __name__ == "__main__":
    main()
