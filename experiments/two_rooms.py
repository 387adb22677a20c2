"""Two Rooms (Chang et al. 2020) on this engine: does a society of frozen options transfer
to a new goal with fewer samples than a monolithic hierarchical PPO over the same options?

Per method and seed: pretrain on `tworooms` (reach green), then transfer to `tworooms-blue`
from the method's own final snapshot (`--init`). The society is a cloned CCV society of CNN
bidders (preset `tworooms`); the baseline a categorical PPO choosing options (preset
`tworooms-monolithic`). Env steps are MiniGrid steps: the sum of the options' durations.
A phase is solved when CRITERION of the last WINDOW episodes reach the goal. Saves
runs.parquet and curves.parquet under <results>/data/<name>/, then writes the table and plot
they make under <results>/ (experiments/regenerate.py remakes them).

    python experiments/two_rooms.py --seeds 5 [--workers 2] [--steps 60000]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl
from generated import (
    RESULTS,
    Table,
    first_reached,
    frame,
    median,
    publish,
    read,
    save_data,
    spread,
)
from pool import Row, run_all

from analyses.wealth import finished_episodes
from simulation.config import resolve
from simulation.runner import prepare

PRESETS = {"society": "tworooms", "monolithic": "tworooms-monolithic"}
WINDOW = 100
CRITERION = 0.9
"""The share of the last WINDOW episodes that reach the goal, to count a phase solved."""


def run_one(method: str, seed: int, steps: int, out: Path) -> tuple[Row, list[Row]]:
    """Pretrain and transfer one method: its summary row and both phases' curves."""
    row: Row = {"method": method, "seed": seed}
    curves: list[Row] = []
    pretrained = out / f"{method}-tworooms-s{seed}"
    for phase, task in (("pretrain", "tworooms"), ("transfer", "tworooms-blue")):
        flags: dict[str, object] = {"seed": seed, "steps": steps, "task": task}
        if phase == "transfer":
            flags["init"] = str(pretrained)
        began = time.perf_counter()
        run = prepare(resolve(PRESETS[method], flags=flags), out / f"{method}-{task}-s{seed}")
        finished = run.execute()
        seconds = time.perf_counter() - began
        progress = _progress(finished.ledger.scan())
        env_steps = int(progress["env_steps"].max() or 0)  # type: ignore[arg-type]
        row |= {
            f"{phase}_env_steps_to_solve": steps_to_solve(progress),
            f"{phase}_final_success": float(progress["success"][-1]),
            f"{phase}_env_steps": env_steps,
            f"{phase}_seconds": seconds,
            f"{phase}_env_steps_per_s": env_steps / seconds,
            f"{phase}_audit_clean": finished.audited.ok,
        }
        every = max(progress.height // 200, 1)
        curves += [
            {"method": method, "seed": seed, "phase": phase, **point}
            for point in progress.gather_every(every).select("env_steps", "success").to_dicts()
        ]
    return row, curves


def _progress(events: pl.LazyFrame) -> pl.DataFrame:
    """Per finished episode: the env steps taken so far and the recent share of successes."""
    reached = (pl.col("units") > 0).cast(pl.Float64)
    return finished_episodes(events).select(
        "seq",
        "env_steps",
        reached.alias("reached"),
        reached.rolling_mean(WINDOW).fill_null(0.0).alias("success"),
    )


def steps_to_solve(progress: pl.DataFrame) -> int | None:
    """The env steps taken when a `_progress` table first meets the criterion (CRITERION of
    the last WINDOW episodes reached the goal); None if it never does."""
    solved: int | None = first_reached(progress, "success", CRITERION)
    return solved


def tables(data: Path) -> list[Table]:
    """Per method and phase, over seeds: the env steps to solve (median [min, max] over the
    seeds that solved), how many solved, the median final success and env steps per second,
    and whether every ledger audited clean."""
    runs = read(data, "runs")
    rows = []
    for (method,), part in runs.group_by("method", maintain_order=True):
        for phase in ("pretrain", "transfer"):
            solve = part[f"{phase}_env_steps_to_solve"]
            rows.append({
                "method": str(method),
                "phase": phase,
                "seeds": str(part.height),
                "env steps to solve": spread(solve),
                "seeds solved": f"{solve.is_not_null().sum()}/{part.height}",
                "final success (median)": median(part[f"{phase}_final_success"], "{:.2f}"),
                "env steps/s (median)": median(part[f"{phase}_env_steps_per_s"]),
                "audit clean": str(bool(part[f"{phase}_audit_clean"].all())),
            })  # fmt: skip
    return [Table(data.name, frame(rows)), Table(f"{data.name}-transfer", transfer(runs))]


def transfer(runs: pl.DataFrame) -> pl.DataFrame:
    """What pretraining did to each method (transfer against pretrain env steps to solve,
    medians), and the methods' transfer against each other; from the runs that solved."""
    solved = {
        (method, phase): runs.filter(pl.col("method") == method)[
            f"{phase}_env_steps_to_solve"
        ].drop_nulls()
        for method in runs["method"].unique(maintain_order=True)
        for phase in ("pretrain", "transfer")
    }
    rows = [
        {
            "measure": f"{method}: env steps to solve, transfer / pretrain (medians)",
            "value": ratio(solved[method, "transfer"], solved[method, "pretrain"]),
        }
        for method in runs["method"].unique(maintain_order=True)
    ]
    if {("society", "transfer"), ("monolithic", "transfer")} <= solved.keys():
        society, monolithic = solved["society", "transfer"], solved["monolithic", "transfer"]
        rows += [
            {
                "measure": "transfer env steps to solve, monolithic / society (medians)",
                "value": ratio(monolithic, society),
            },
            {
                "measure": "every society seed transfers in fewer env steps than every "
                "monolithic seed",
                "value": "-" if society.is_empty() or monolithic.is_empty()
                else ("yes" if society.max() < monolithic.min() else "no"),  # type: ignore[operator]
            },
        ]  # fmt: skip
    made: pl.DataFrame = frame(rows)
    return made


def ratio(top: pl.Series, bottom: pl.Series) -> str:
    """The ratio of the medians, as `1.23x`; `-` if either is empty."""
    if top.is_empty() or bottom.is_empty():
        return "-"
    return f"{float(np.median(top.to_numpy())) / float(np.median(bottom.to_numpy())):.2f}x"


def plots(data: Path, img: Path) -> None:
    """Each phase's share of successes against env steps, a line per method and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read(data, "curves")
    img.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (phase, title) in zip(
        axes,
        (("pretrain", "pretrain: reach green"), ("transfer", "transfer: reach blue")),
        strict=True,
    ):
        for m, method in enumerate(curves["method"].unique(maintain_order=True)):
            part = curves.filter((pl.col("method") == method) & (pl.col("phase") == phase))
            for i, seed in enumerate(part["seed"].unique().sort()):
                r = part.filter(pl.col("seed") == seed)
                ax.plot(r["env_steps"], r["success"], color=f"C{m}", alpha=0.6,
                        label=method if i == 0 else None)  # fmt: skip
        ax.axhline(CRITERION, color="grey", linestyle=":", label=f"criterion ({CRITERION})")
        ax.set_title(f"Two Rooms, {title}")
        ax.set_xlabel("env steps (MiniGrid steps inside the options)")
        ax.set_ylabel(f"share of the last {WINDOW} episodes reaching the goal")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(img / f"{data.name}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60_000, help="auctions per phase")
    parser.add_argument("--methods", default="society,monolithic")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/two-rooms"))
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved data, tables and plots go here"
    )
    parser.add_argument("--name", default="two-rooms", help="the saved data's directory name")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from agents.option_ppo import ensure_options, rich_progress

    with rich_progress() as progress:  # once, before the workers start
        ensure_options(progress=progress)
    methods = args.methods.split(",")
    jobs = [(m, seed, args.steps, args.out) for m in methods for seed in range(args.seeds)]
    rows, curve_rows = run_all(run_one, jobs, args.workers)
    order = pl.col("method").replace_strict(methods, list(range(len(methods))))
    frames = {"runs": pl.DataFrame(rows).sort(order, "seed"), "curves": pl.DataFrame(curve_rows)}
    publish(save_data(args.results, args.name, "two-rooms", frames), args.results)


if __name__ == "__main__":
    main()
