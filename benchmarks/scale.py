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
Measurements are saved to --root/scale.json (a size already measured is kept unless
--again); the table, docs/results.md's section "The ledger at scale" and docs/img/scale.png
are written from that file.

    python benchmarks/scale.py [--sizes 1M,10M,100M,1B] [--root benchmarks/out/scale]
                               [--again] [--write-docs]
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

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
EVENTS_PER_EPISODE = 134
"""Events per Chain episode of random bidders under CCV, cloned (measured: 6,709,318 events
in 50,000 episodes)."""
STEPS = ("simulate", "audit", "replay", "report", "resume")
MEMORY_TARGET_GIB = 1.5
BEGIN, END = "<!-- scale: begin (benchmarks/scale.py) -->", "<!-- scale: end -->"
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


def table(results: dict[str, Any]) -> Table:
    bare = results["simpy_events_per_s"]
    out = Table(
        title=f"the ledger at scale ({results['machine']}); bare SimPy {bare / 1e6:.2f}M "
        f"events/s; targets: peak < {MEMORY_TARGET_GIB} GiB and flat, audit >= 3x SimPy, "
        "simulate >= 1.45x"
    )
    out.add_column("events", justify="right")
    for step in STEPS:
        out.add_column(f"{step} s", justify="right")
        out.add_column(f"{step} MiB", justify="right")
    out.add_column("audit / SimPy", justify="right")
    out.add_column("simulate / SimPy", justify="right")
    for row in rows(results):
        cells = [f"{row['events']:,}"]
        for step in STEPS:
            seconds, mib = row.get(step) or (None, None)
            cells += [
                "" if seconds is None else f"{seconds:,.1f}",
                "" if mib is None else f"{mib:,.0f}",
            ]
        cells += ratios(row, bare)
        out.add_row(*cells)
    return out


def ratios(row: dict[str, Any], bare: float) -> list[str]:
    """Audit's and simulate's events/s as multiples of the bare SimPy rate (measured in the
    same invocation as the row, when it was saved with it)."""
    bare = row.get("simpy_events_per_s", bare)
    simulate = row.get("simulate_events_per_s")
    return [
        f"{row['events'] / row['audit'][0] / bare:.2f}x",
        "" if simulate is None else f"{simulate / bare:.2f}x",
    ]


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(results["sizes"].values(), key=lambda r: r["size"])


def markdown(results: dict[str, Any]) -> str:
    """docs/results.md's section, every figure from the saved measurements."""
    bare = results["simpy_events_per_s"]
    lines = [
        BEGIN,
        "",
        "## The ledger at scale",
        "",
        f"`python benchmarks/scale.py --sizes {','.join(label(r['size']) for r in rows(results))}"
        " --write-docs`, on "
        f"{results['machine']}; each command in a fresh process, as typed (the module "
        "docstring lists them); peak = the process's maximum resident memory. The ratios "
        "divide by the bare SimPy rate measured in the same invocation as the row ("
        + ", ".join(
            f"{label(r['size'])}: {r.get('simpy_events_per_s', bare) / 1e6:.2f}M"
            for r in rows(results)
        )
        + " events/s; it varies with the machine's load from run to run). Simulate's ratio "
        "is its run loop's rate (summary.json), without the closing audit.",
        "",
        "| events | on disk (MiB) | "
        + " | ".join(f"{s} s / peak MiB" for s in STEPS)
        + " | audit / SimPy | simulate / SimPy |",
        "|---|---|" + "---|" * len(STEPS) + "---|---|",
    ]
    for row in rows(results):
        cells = [f"{row['events']:,}", f"{row['on_disk_mib']:,.0f}"]
        for step in STEPS:
            seconds, mib = row.get(step) or (None, None)
            cells.append("not measured" if seconds is None else f"{seconds:,.1f} / {mib:,.0f}")
        cells += ratios(row, bare)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *findings(results), ""]
    lines += [
        "![peak memory against events](img/scale.png)",
        "",
        END,
    ]
    return "\n".join(lines)


def findings(results: dict[str, Any]) -> list[str]:
    """What the table says against the issue's targets, computed from it."""
    data, bare = rows(results), results["simpy_events_per_s"]
    target = MEMORY_TARGET_GIB * 1024
    peak = max(r[s][1] for r in data for s in STEPS if r.get(s))
    out = [
        f"- **Memory:** the largest peak of any command at any size is {peak:,.0f} MiB "
        f"({'under' if peak < target else 'over'} the {target:,.0f} MiB target). Per "
        "command, smallest and largest peak over the sizes (a flat line is the target):"
    ]
    for step in STEPS:
        peaks = [r[step][1] for r in data if r.get(step)]
        if peaks:
            out.append(f"  {step} {min(peaks):,.0f}-{max(peaks):,.0f} MiB;")
    out[-1] = out[-1].rstrip(";") + "."
    out.append("- **Time per event** (microseconds; the same figure at every size is linear time):")
    for step in ("audit", "replay", "report"):
        per = [f"{r[step][0] / r['events'] * 1e6:.2f}" for r in data if r.get(step)]
        out.append(f"  {step} {', '.join(per)};")
    out[-1] = out[-1].rstrip(";") + " (by size, smallest first)."
    audit = [r["events"] / r["audit"][0] / r.get("simpy_events_per_s", bare) for r in data]
    sims = [
        r["simulate_events_per_s"] / r.get("simpy_events_per_s", bare)
        for r in data
        if r.get("simulate_events_per_s")
    ]
    out.append(
        f"- **Audit throughput:** {min(audit):.2f}x to {max(audit):.2f}x the bare SimPy rate "
        f"(target 3x: {'met' if min(audit) >= 3 else 'not met'}). **Simulate** (the run "
        f"loop, from summary.json): {min(sims):.2f}x to {max(sims):.2f}x (target 1.45x: "
        f"{'met' if min(sims) >= 1.45 else 'not met'})."
    )
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, sec) = plt.subplots(1, 2, figsize=(11, 4))
    data = rows(results)
    events = [r["events"] for r in data]
    for step in STEPS:
        have = [(r["events"], r[step]) for r in data if r.get(step)]
        mem.plot([e for e, _ in have], [v[1] for _, v in have], marker="o", label=step)
        sec.plot([e for e, _ in have], [v[0] for _, v in have], marker="o", label=step)
    mem.axhline(MEMORY_TARGET_GIB * 1024, color="red", linestyle="--", label="1.5 GiB target")
    mem.set(xscale="log", yscale="log", xlabel="events in the ledger", ylabel="peak RSS (MiB)",
            title="peak memory: flat in the ledger's length")  # fmt: skip
    sec.plot(events, [e / results["simpy_events_per_s"] for e in events], "k:",
             label="bare SimPy, same events")  # fmt: skip
    sec.set(xscale="log", yscale="log", xlabel="events in the ledger", ylabel="wall seconds",
            title="time: linear in the ledger's length")  # fmt: skip
    for ax in (mem, sec):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_docs(results: dict[str, Any]) -> None:
    doc = ROOT / "docs" / "results.md"
    text = doc.read_text(encoding="utf-8")
    section = markdown(results)
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
    plot(results, ROOT / "docs" / "img" / "scale.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M,100M,1B")
    parser.add_argument("--root", type=Path, default=ROOT / "benchmarks" / "out" / "scale")
    parser.add_argument("--again", action="store_true", help="re-measure sizes already saved")
    parser.add_argument("--write-docs", action="store_true", help="update docs/results.md")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.root.mkdir(parents=True, exist_ok=True)
    saved = args.root / "scale.json"
    results: dict[str, Any] = (
        json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {"sizes": {}}
    )
    results["simpy_events_per_s"] = raw_simpy_rate()
    results["machine"] = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    console = Console()
    for size in sizes:
        key = label(size)
        if key in results["sizes"] and not args.again:
            continue
        console.print(f"measuring {key} events ...")
        found = measure(size, args.root) | {"simpy_events_per_s": results["simpy_events_per_s"]}
        for kept in ("simulate", "simulate_events_per_s"):  # a reused ledger keeps its run's
            if kept not in found and key in results["sizes"]:
                found[kept] = results["sizes"][key].get(kept)
        results["sizes"][key] = found
        saved.write_text(json.dumps(results, indent=2), encoding="utf-8")
    console.print(table(results))
    if args.write_docs:
        write_docs(results)
        console.print("docs/results.md and docs/img/scale.png written")


if __name__ == "__main__":
    main()
