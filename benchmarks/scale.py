"""The ledger at scale: wall time and peak memory of simulate, audit, replay, report and
resume, from 1M to 1B events.

Per size, one Chain run of random bidders under CCV, 256 episodes at a time (the round
kernel), about 134 events an episode, is made once into --root/ledger-<size> and reused.
Each command then runs in a fresh process, as a user would type it, and its wall seconds
and peak resident memory (the process's maximum RSS, from wait4) are recorded:

  simulate  market simulate --task chain --mechanism ccv --bidder random --episodes E
            --concurrency 256 --seed 0 --out DIR   (run, closing audit, summary)
  audit     market audit DIR
  replay    every account's balance folded from the whole ledger (ledger.replay.replay)
  report    market report DIR
  resume    market simulate --resume DIR --episodes 1000 (appends to the reused ledger)

This machine's bare SimPy event rate (a single-process `env.timeout` loop) is measured in
the same run; targets: peak memory under 1.5 GiB and flat in the ledger's length,
time linear; audit events/s at least 3x the SimPy rate, simulate's at least 1.45x.
Measurements are saved to docs/results/data/scale/sizes.parquet, one row per size (a size
already measured is kept unless --again); the tables `scale` and `scale-targets` and the plot
docs/results/img/scale.png are written from that file (docs/results.md).

    python benchmarks/scale.py [--sizes 1M,10M,100M,1B] [--root benchmarks/out/scale]
                               [--again]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium
from generated import RESULTS, Table, frame, publish, read, save_data

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PER_EPISODE = 134
"""Events per Chain episode of random bidders under CCV, cloned (measured: 6,709,318 events
in 50,000 episodes)."""
STEPS = ("simulate", "audit", "replay", "report", "resume")
MEMORY_TARGET_GIB = 1.5
REPLAY = (
    "import sys; from ledger.disk import DiskLedger; from ledger.replay import replay; "
    "print(len(replay(DiskLedger.open_existing(sys.argv[1]))))"
)


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000, '1B' -> 1_000_000_000, '250k', or a plain number."""
    match = re.fullmatch(r"(\d+)([kKmMbB]?)", text.strip())
    if match is None:
        raise SystemExit(f"error: not a size: {text!r} (e.g. 1M, 10M, 1B)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[match.group(2).lower()]
    return int(match.group(1)) * scale


def label(events: int) -> str:
    for scale, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if events >= scale and events % scale == 0:
            return f"{events // scale}{suffix}"
    return str(events)


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of `command` in a fresh process; exits on failure."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = child.stderr.read().decode() if child.stderr else ""
        raise SystemExit(f"error: {' '.join(command)} failed: {err.strip()[-500:]}")
    return seconds, usage.ru_maxrss / 1024


def market(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def measure(size: int, root: Path) -> dict[str, Any]:
    """Every step's seconds and peak MiB at `size` events (the ledger made if missing)."""
    run = root / f"ledger-{label(size)}"
    episodes = max(size // EVENTS_PER_EPISODE, 1)
    found: dict[str, Any] = {"size": size, "episodes": episodes}
    finished = (run / "summary.json").is_file() and json.loads(
        (run / "summary.json").read_text(encoding="utf-8")
    ).get("stopped") is None  # an interrupted run's summary says so
    if not finished:
        if run.exists():
            raise SystemExit(f"error: {run} holds an unfinished run; remove it and run again")
        found["simulate"] = timed(
            market("simulate", "--task", "chain", "--mechanism", "ccv", "--bidder", "random",
                   "--episodes", str(episodes), "--concurrency", "256", "--seed", "0",
                   "--out", str(run))
        )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    if summary["episodes"] == episodes:  # the run's own summary (a resume rewrites it)
        found["simulate_events_per_s"] = summary["events"] / summary["seconds"]
    manifest = (run / "ledger" / "chain.jsonl").read_text(encoding="utf-8").splitlines()
    found["events"] = json.loads(manifest[-1])["last_seq"] + 1
    found["audit"] = timed(market("audit", str(run)))
    found["replay"] = timed([sys.executable, "-c", REPLAY, str(run / "ledger")])
    found["report"] = timed(market("report", str(run)))
    found["resume"] = timed(market("simulate", "--resume", str(run), "--episodes", "1000"))
    ledger = run / "ledger"
    found["on_disk_mib"] = sum(p.stat().st_size for p in ledger.iterdir()) / 2**20
    return found


def raw_simpy_rate() -> float:
    """The best of three bare SimPy loops (benchmarks/engine.py's), in events/s."""
    from engine import raw_simpy_rate as rate

    return float(max(rate() for _ in range(3)))


def row_of(found: dict[str, Any]) -> dict[str, Any]:
    """A size's measurements as one flat row of the saved table (`sizes.parquet`)."""
    row = {k: found.get(k) for k in SCALARS}
    for step in STEPS:
        seconds, mib = found.get(step) or (None, None)
        row[f"{step}_s"], row[f"{step}_mib"] = seconds, mib
    return row


SCALARS = {
    "size": pl.Int64, "episodes": pl.Int64, "events": pl.Int64, "on_disk_mib": pl.Float64,
    "simpy_events_per_s": pl.Float64, "simulate_events_per_s": pl.Float64, "machine": pl.String,
}  # fmt: skip
SCHEMA = SCALARS | {f"{step}_{unit}": pl.Float64 for step in STEPS for unit in ("s", "mib")}
"""The saved table's columns: one row per size."""


def tables(data: Path) -> list[Table]:
    """The measurements per size, and what they say against the targets; from the saved
    table."""
    sizes = read(data, "sizes").sort("size")
    rows = []
    for r in sizes.iter_rows(named=True):
        row = {"events": f"{r['events']:,}", "on disk (MiB)": f"{r['on_disk_mib']:,.0f}"}
        for step in STEPS:
            seconds, mib = r[f"{step}_s"], r[f"{step}_mib"]
            row[f"{step} s / peak MiB"] = (
                "not measured" if seconds is None else f"{seconds:,.1f} / {mib:,.0f}"
            )
        bare = r["simpy_events_per_s"]
        row["bare SimPy events/s"] = f"{bare / 1e6:.2f}M"
        row["audit / SimPy"] = f"{r['events'] / r['audit_s'] / bare:.2f}x"
        simulate = r["simulate_events_per_s"]
        row["simulate / SimPy"] = "-" if simulate is None else f"{simulate / bare:.2f}x"
        rows.append(row)
    return [Table("scale", frame(rows)), Table("scale-targets", frame(verdicts(sizes)))]


def verdicts(sizes: pl.DataFrame) -> list[dict[str, str]]:
    """Each target, what the sizes measured, and whether it is met."""
    target = MEMORY_TARGET_GIB * 1024
    peaks: list[float] = (
        sizes.select(pl.max_horizontal(f"{s}_mib" for s in STEPS)).to_series().to_list()
    )
    audit: list[float] = (
        sizes["events"] / sizes["audit_s"] / sizes["simpy_events_per_s"]
    ).to_list()
    simulate: list[float] = (
        (sizes["simulate_events_per_s"] / sizes["simpy_events_per_s"]).drop_nulls().to_list()
    )
    out = [
        {
            "measure": "peak memory of any command (MiB)",
            "measured, by size": ", ".join(f"{v:,.0f}" for v in peaks),
            "target": f"under {target:,.0f}, flat",
            "met": "yes" if max(peaks) < target else "no",
        },
        {
            "measure": "audit events/s, x the bare SimPy rate",
            "measured, by size": ", ".join(f"{v:.2f}" for v in audit),
            "target": "at least 3 at every size",
            "met": "yes" if min(audit) >= 3 else "no",
        },
        {
            "measure": "simulate's run loop events/s (summary.json), x the bare SimPy rate",
            "measured, by size": ", ".join(f"{v:.2f}" for v in simulate),
            "target": "at least 1.45 at every size",
            "met": "yes" if simulate and min(simulate) >= 1.45 else "no",
        },
    ]
    for step in ("audit", "replay", "report"):
        per = (sizes[f"{step}_s"] / sizes["events"] * 1e6).drop_nulls()
        out.append(
            {
                "measure": f"{step}: microseconds per event",
                "measured, by size": ", ".join(f"{v:.2f}" for v in per),
                "target": "the same at every size (linear time)",
                "met": "-",
            }
        )
    return out


def plots(data: Path, img: Path) -> None:
    """Peak memory and wall seconds against events, log-log (`<img>/scale.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = read(data, "sizes").sort("size")
    fig, (mem, sec) = plt.subplots(1, 2, figsize=(11, 4))
    events = sizes["events"].to_list()
    for step in STEPS:
        have = sizes.filter(pl.col(f"{step}_s").is_not_null())
        mem.plot(have["events"], have[f"{step}_mib"], marker="o", label=step)
        sec.plot(have["events"], have[f"{step}_s"], marker="o", label=step)
    mem.axhline(MEMORY_TARGET_GIB * 1024, color="red", linestyle="--", label="1.5 GiB target")
    mem.set(xscale="log", yscale="log", xlabel="events in the ledger", ylabel="peak RSS (MiB)",
            title="peak memory: flat in the ledger's length")  # fmt: skip
    bare = sizes["simpy_events_per_s"].to_list()
    sec.plot(events, [e / b for e, b in zip(events, bare, strict=True)], "k:",
             label="bare SimPy, same events")  # fmt: skip
    sec.set(xscale="log", yscale="log", xlabel="events in the ledger", ylabel="wall seconds",
            title="time: linear in the ledger's length")  # fmt: skip
    for ax in (mem, sec):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    img.mkdir(parents=True, exist_ok=True)
    fig.savefig(img / f"{data.name}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,100M,1B")
    parser.add_argument("--root", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    parser.add_argument("--again", action="store_true", help="re-measure sizes already saved")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument("--name", default="scale", help="the saved data's directory")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.root.mkdir(parents=True, exist_ok=True)
    saved = args.results / "data" / args.name / "sizes.parquet"
    kept = pl.read_parquet(saved) if saved.is_file() else pl.DataFrame(schema=SCHEMA)
    bare = raw_simpy_rate()
    machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    console = Console()
    for size in sizes:
        before = kept.filter(pl.col("size") == size)
        if before.height and not args.again:
            continue
        console.print(f"measuring {label(size)} events ...")
        found = measure(size, args.root) | {"simpy_events_per_s": bare, "machine": machine}
        for step in ("simulate", "simulate_events_per_s"):  # a reused ledger keeps its run's
            if step not in found and before.height:
                old = before.row(0, named=True)
                found[step] = old[step] if step in old else (old[f"{step}_s"], old[f"{step}_mib"])
        row = pl.DataFrame([row_of(found)], schema=SCHEMA)
        kept = pl.concat([kept.filter(pl.col("size") != size), row]).sort("size")
    data = save_data(args.results, args.name, "scale", {"sizes": kept})
    publish(data, args.results)


if __name__ == "__main__":
    main()
