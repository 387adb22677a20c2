"""Engine speed: end-to-end ledger events/s, auctions/s, audit and replay events/s.

Each figure is printed next to this machine's raw SimPy event rate (a bare single-process
`env.timeout` loop), measured in the same run, as a ratio. The workload is a no-learning
cloned CCV Chain run with truthful bidders and the on-disk ledger, one episode at a time
(the episode kernel) and with many at once (the round kernel; the same ledger).

    python benchmarks/engine.py [--episodes 20000] [--repeats 3] [--concurrency 1,32,256]
                                [--profile]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Generator

import numpy as np
import polars as pl
import simpy
from generated import RESULTS, Table, frame, publish, read, save_data

from agents.fixed import make_bidder
from ledger.disk import DiskLedger
from ledger.replay import replay
from market.audit import audit
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

COMPONENTS = {
    "market/kernel.py": "kernel (auction loop, event records)",
    "market/core.py": "kernel (auction loop, event records)",
    "market/society.py": "kernel (auction loop, event records)",
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


TARGETS = {"e2e": 0.25, "audit": 3.0, "replay": 3.0}
"""Each measure's target, as a multiple of the raw SimPy rate."""


def measure_name(key: str) -> str:
    """'e2e-32' -> 'end to end (ledger events), 32 at once (rounds)'."""
    kind, _, width = key.partition("-")
    label = {
        "raw": "raw SimPy (env.timeout loop)",
        "e2e": "end to end (ledger events)",
        "auctions": "auctions",
        "audit": "audit (events)",
        "replay": "replay (events)",
    }[kind]
    if not width:
        return label
    return f"{label}, {width} at once ({'rounds' if int(width) > 1 else 'episodes'})"


def tables(data: Path) -> list[Table]:
    """The rates' medians against the raw SimPy rate, the ledger measured, and (if
    profiled) where the time goes; from the saved measurements."""
    rates = read(data, "rates").group_by("measure", maintain_order=True).agg(pl.col("per_s"))
    med = {m: float(np.median(v)) for m, v in rates.iter_rows()}
    run = read(data, "run").row(0, named=True)
    rows = [
        {
            "measure": measure_name(m),
            "rate /s": f"{med[m]:,.0f}",
            "x raw SimPy": f"{med[m] / med['raw']:.2f}",
            "target": f">= {TARGETS[m.partition('-')[0]]:g}"
            if m.partition("-")[0] in TARGETS
            else "",
        }
        for m in med
    ]
    ledger = {
        "episodes": f"{run['episodes']:,}",
        "runs per measure (median of)": str(run["repeats"]),
        "events": f"{run['events']:,}",
        "auctions": f"{run['auctions']:,}",
        "events per auction": f"{run['events'] / run['auctions']:.1f}",
        "bytes per event on disk": f"{run['bytes'] / run['events']:.1f}",
    }
    made = [Table("engine", frame(rows)), Table("engine-ledger", frame([ledger]))]
    if (data / "profile.parquet").is_file():
        shares = read(data, "profile").sort("share", descending=True)
        made.append(
            Table(
                "engine-profile",
                frame([{"component": c, "share": f"{v:.0%}"} for c, v in shares.iter_rows()]),
            )
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--concurrency", default="1,32,256", help="episodes at once, comma-separated"
    )
    parser.add_argument("--profile", action="store_true", help="also profile the run")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument("--name", default="engine", help="the saved data's directory name")
    args = parser.parse_args()
    widths = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):  # interleaved, so machine noise hits every figure alike
            rows.append({"measure": "raw", "repeat": k, "per_s": raw_simpy_rate()})
            for c in widths:
                path = Path(tmp) / f"ledger-{k}-{c}"
                seconds, events, auctions = run_chain(path, args.episodes, c)
                rows.append({"measure": f"e2e-{c}", "repeat": k, "per_s": events / seconds})
                rows.append({"measure": f"auctions-{c}", "repeat": k, "per_s": auctions / seconds})
            ledger = DiskLedger.open_existing(path)
            start = time.perf_counter()
            report = audit(ledger)
            rows.append(
                {"measure": "audit", "repeat": k, "per_s": events / (time.perf_counter() - start)}
            )
            start = time.perf_counter()
            balances = replay(ledger)
            rows.append(
                {"measure": "replay", "repeat": k, "per_s": events / (time.perf_counter() - start)}
            )
            assert report.ok and sum(balances.values()) == 0
        size = sum(p.stat().st_size for p in path.iterdir())
        frames = {
            "rates": pl.DataFrame(rows),
            "run": pl.DataFrame(
                [{"episodes": args.episodes, "repeats": args.repeats, "events": events,
                  "auctions": auctions, "bytes": size}]
            ),
        }  # fmt: skip
        if args.profile:
            shares = profile_shares(Path(tmp) / "profiled", max(args.episodes // 4, 1))
            frames["profile"] = pl.DataFrame(shares, schema=["component", "share"], orient="row")
    data = save_data(args.results, args.name, "engine", frames)
    publish(data, args.results)


if __name__ == "__main__":
    main()
