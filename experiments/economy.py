"""The Hayek economy on Chain with useless primitives: does it prune them, and does
it learn faster or slower than the fixed cloned society?

Per arm and seed, one learning run (CCV, cloned founders, the presets `hayek` and
`hayek-fixed`) of `--steps` env steps on `chain --primitives N`: L and R, then `stay`,
`reset` and `back` moves that never approach the goal. The arm `fixed` is the cloned society
without an economy; every other arm is a Hayek economy with the settings in ARMS
(docs/economy.md). Per run: the env steps until CRITERION of the last WINDOW episodes reach
the goal, the share that do over the last tenth of the run and their mean length (5 is
optimal), the env step of extinction (if), members alive at the end (and how many run a
useless primitive: neither L nor R), the share of the living that run R (the one move
toward the goal), births, deaths (and how many were useless), the share
of the living that descend from one founder (the largest lineage), the Gini of the living
members' wealth and the richest member's share at the end. Saves runs.parquet and
curves.parquet under <results>/data/<name>/, then writes the table (median and range over
seeds) and the plot they make under <results>/ (experiments/regenerate.py remakes them).
The runs' ledgers stay in --out.

    python experiments/economy.py --seeds 5 [--primitives 12] [--steps 200000] [--arms ...]
                                  [--ppo preset|methods] [--name economy]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

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

from agents.settings import PPOConfig
from analyses.population import lifecycle, living_inequality, population
from analyses.wealth import env_steps_clock, finished_episodes
from simulation.config import resolve
from simulation.runner import prepare

ARMS: dict[str, dict[str, Any]] = {
    "fixed": {},
    "hayek": {"endowment": 1.0, "rent": 0.001},
    "poor": {"endowment": 10.0, "rent": 0.0001},
    "lean": {"endowment": 20.0, "rent": 0.0001},
    "endowed": {"endowment": 50.0, "rent": 0.0001},
    "endowed-c128": {"endowment": 50.0, "rent": 0.0001, "concurrency": 128},
    "rich": {"endowment": 200.0, "rent": 0.0001},
    "no-rent": {"endowment": 50.0, "rent": 0.0},
    "dividend": {"endowment": 50.0, "rent": 0.0001, "dividend": 0.5},
}
"""Each arm's economy settings (the rest at EconomyConfig's defaults), and its concurrency
if not the preset's 8. `fixed` is the preset `hayek-fixed`, the cloned society without an
economy; the others are the preset `hayek` with these settings. Both presets' PPO takes
larger steps than methods.md's (4e-5, one pass over 4096): at those, no arm learns Chain
with 10 useless primitives within 500k env steps (docs/results.md)."""
USEFUL = ("L", "R")
"""The issue's useful moves; of them only R approaches the goal."""
WINDOW = 200
"""Episodes in the rolling share of successes that the curves plot."""
CRITERION = 0.9
"""The rolling share of successes at which a run counts as solved."""


def run_one(
    arm: str, seed: int, primitives: int, steps: int, out: Path, ppo: dict[str, Any]
) -> tuple[Row, list[Row]]:
    """One run of `arm`: its summary row and its curves (success, population, Gini)."""
    settings = dict(ARMS[arm])
    economy = bool(settings)
    flags: dict[str, Any] = {"primitives": primitives, "steps": steps, "seed": seed, "ppo": ppo}
    if "concurrency" in settings:
        flags["concurrency"] = settings.pop("concurrency")
    if economy:
        flags["hayek"] = settings
    preset = "hayek" if economy else "hayek-fixed"
    run_dir = out / f"{arm}-p{primitives}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run of an earlier call
    began = time.perf_counter()
    finished = prepare(resolve(preset, flags=flags), run_dir).execute()
    seconds = time.perf_counter() - began
    events = finished.ledger.scan()
    clock = env_steps_clock(events)
    success = _success(events)
    lives = lifecycle(events)
    deaths = lives.filter(pl.col("event") == "died")
    alive = lives.group_by("account").agg(pl.col("change").sum()).filter(pl.col("change") > 0)
    primitive = pl.col("account").str.split(".").list.first()
    useless = ~primitive.is_in(list(USEFUL))
    # Events before the first move (the founders' opening) are at env step 0.
    pop = (
        population(events).join_asof(clock, on="seq").with_columns(pl.col("env_steps").fill_null(0))
    )
    extinct = pop.filter((pl.col("alive") == 0) & (pl.col("seq") > pop["seq"].min()))
    wealth = (
        living_inequality(events, 50)
        .join_asof(clock, on="seq")
        .with_columns(pl.col("env_steps").fill_null(0))
    )
    tail = success.tail(max(success.height // 10, 1))
    row: Row = {
        "arm": arm,
        "seed": seed,
        "success": float(tail["reached"].mean() or 0.0),  # type: ignore[arg-type]
        "solved_at": solved_at(success),
        "length": float(tail["length"].mean() or 0.0),  # type: ignore[arg-type]
        "episodes": success.height,
        "env_steps": int(clock["env_steps"].max() or 0),  # type: ignore[arg-type]
        "extinct_at": int(extinct["env_steps"][0]) if extinct.height else None,
        "alive": alive.height if economy else None,
        "useless_alive": alive.filter(useless).height if economy else None,
        "r_share": alive.filter(primitive == "R").height / alive.height if alive.height else None,
        "births": lives.filter(pl.col("event") == "born").height,
        "deaths": deaths.height,
        "useless_deaths": deaths.filter(useless).height,
        "lineage": _largest_lineage(lives, alive["account"].to_list()) if economy else None,
        "gini": float(wealth["gini"][-1]) if wealth.height and not extinct.height else None,
        "top1": wealth["top1_share"][-1] if wealth.height and not extinct.height else None,
        "seconds": seconds,
        "audit_clean": finished.audited.ok,
    }
    every = max(success.height // 200, 1)
    curves: list[Row] = [
        {"arm": arm, "seed": seed, "curve": "success", "env_steps": s, "value": v}
        for s, v in success.gather_every(every)
        .select("env_steps", "rolling")
        .drop_nulls()
        .iter_rows()
    ]
    if economy:
        curves += [
            {"arm": arm, "seed": seed, "curve": "alive", "env_steps": s, "value": float(v)}
            for s, v in pop.select("env_steps", "alive").iter_rows()
        ]
        if pop.height:  # the population holds until the run's end
            curves.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "curve": "alive",
                    "env_steps": row["env_steps"],
                    "value": float(pop["alive"][-1]),
                }
            )
        curves += [
            {"arm": arm, "seed": seed, "curve": "gini", "env_steps": s, "value": v}
            for s, v in wealth.select("env_steps", "gini").drop_nulls().iter_rows()
        ]
    return row, curves


def _largest_lineage(lives: pl.DataFrame, living: list[str]) -> float | None:
    """The share of the living members that descend from one founder, the most common."""
    parent = dict(lives.filter(pl.col("event") == "born").select("account", "parent").iter_rows())

    def founder(account: str) -> str:
        while account in parent:
            account = parent[account]
        return account

    roots = [founder(a) for a in living]
    return max(roots.count(r) for r in set(roots)) / len(roots) if roots else None


def _success(events: pl.LazyFrame) -> pl.DataFrame:
    """Per finished episode: env steps so far, whether it reached the goal, and the rolling
    share of the last WINDOW episodes that did."""
    return finished_episodes(events).select(
        "seq",
        "env_steps",
        (pl.col("units") > 0).cast(pl.Float64).alias("reached"),
        pl.col("steps").alias("length"),
        (pl.col("units") > 0).cast(pl.Float64).rolling_mean(WINDOW).alias("rolling"),
    )


def solved_at(success: pl.DataFrame) -> int | None:
    """The env steps taken when a `_success` table's rolling share first reaches CRITERION;
    None if it never does."""
    solved: int | None = first_reached(success, "rolling", CRITERION)
    return solved


COLUMNS = (
    ("env steps to solve", "solved_at", "{:,.0f}"),
    ("success (last tenth)", "success", "{:.2f}"),
    ("episode length", "length", "{:.1f}"),
    ("extinct at env step", "extinct_at", "{:,.0f}"),
    ("alive at end", "alive", "{:.0f}"),
    ("useless alive", "useless_alive", "{:.0f}"),
    ("R's share of the living", "r_share", "{:.2f}"),
    ("births", "births", "{:.0f}"),
    ("deaths", "deaths", "{:.0f}"),
    ("useless deaths", "useless_deaths", "{:.0f}"),
    ("largest lineage", "lineage", "{:.2f}"),
    ("Gini (living)", "gini", "{:.2f}"),
    ("richest's share", "top1", "{:.2f}"),
    ("seconds per run", "seconds", "{:,.0f}"),
)
"""The table's spread columns: heading, runs.parquet column, format."""


def tables(data: Path) -> list[Table]:
    """Per arm, over seeds: how many solved and died out, then COLUMNS as median [min, max]
    (one value where every seed agrees; `-` where none has one) and whether every ledger
    audited clean."""
    runs = read(data, "runs")
    rows = []
    for (arm,), part in runs.group_by("arm", maintain_order=True):
        row = {"arm": str(arm), "seeds": str(part.height)}
        row["solved"] = str(part["solved_at"].drop_nulls().len())
        row["extinct"] = str(part["extinct_at"].drop_nulls().len())
        row |= {heading: spread(part[col], fmt) for heading, col, fmt in COLUMNS}
        row["clean"] = str(bool(part["audit_clean"].all()))
        rows.append(row)
    found = [Table(data.name, frame(rows))]
    ladder = endowment_ladder(runs)
    return [*found, Table(f"{data.name}-endowments", ladder)] if ladder.height else found


ENDOWMENTS = ("poor", "lean", "endowed", "rich")
"""The arms that differ only in their endowment: the ladder from extinction to runaway."""


def endowment_ladder(runs: pl.DataFrame) -> pl.DataFrame:
    """Per arm of ENDOWMENTS that ran: its endowment, the seeds that solved and that died out,
    and the median env steps to solve."""
    rows = []
    for arm in ENDOWMENTS:
        part = runs.filter(pl.col("arm") == arm)
        if part.height:
            rows.append({
                "endowment": f"{ARMS[arm]['endowment']:.0f} (`{arm}`)",
                "solved": f"{part['solved_at'].drop_nulls().len()}/{part.height}",
                "extinct": f"{part['extinct_at'].drop_nulls().len()}/{part.height}",
                "env steps to solve (median)": median(part["solved_at"]),
            })  # fmt: skip
    made: pl.DataFrame = frame(rows)
    return made


def plots(data: Path, img: Path) -> None:
    """Three panels against env steps, a line per arm and seed: the share of successes,
    the members alive and the Gini of the living members' wealth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, runs = read(data, "curves"), read(data, "runs")
    primitives = int(runs["primitives"][0])
    img.mkdir(parents=True, exist_ok=True)
    panels = (
        ("success", f"share of the last {WINDOW} episodes reaching the goal"),
        ("alive", "members alive"),
        ("gini", "Gini of the living members' wealth"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (curve, label) in zip(axes, panels, strict=True):
        part = curves.filter(pl.col("curve") == curve)
        for m, arm in enumerate(ARMS):
            mine = part.filter(pl.col("arm") == arm)
            for i, seed in enumerate(mine["seed"].unique().sort()):
                r = (  # a step's last value: the opening's founders all join at step 0
                    mine.filter(pl.col("seed") == seed)
                    .group_by("env_steps", maintain_order=True)
                    .last()
                    .sort("env_steps")
                )
                ax.plot(r["env_steps"], r["value"], color=f"C{m}", alpha=0.6, lw=1,
                        label=arm if i == 0 else None)  # fmt: skip
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.set_title(f"chain, {primitives} primitives: {curve}")
        if ax.get_legend_handles_labels()[0]:  # the fixed society has no population curves
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / f"{data.name}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--primitives", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    parser.add_argument("--arms", default=",".join(ARMS), help="a comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/economy"))
    parser.add_argument(
        "--ppo",
        choices=("preset", "methods"),
        default="preset",
        help="the presets' PPO settings, or methods.md's (PPOConfig's defaults)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved data, tables and plots go here"
    )
    parser.add_argument("--name", default="economy", help="the saved data's directory name")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    ppo = PPOConfig().model_dump(exclude={"gamma"}) if args.ppo == "methods" else {}
    jobs = [
        (a, s, args.primitives, args.steps, args.out, ppo) for a in arms for s in range(args.seeds)
    ]
    rows, curve_rows = run_all(run_one, jobs, args.workers)
    order = pl.col("arm").replace_strict(list(ARMS), list(range(len(ARMS))))
    runs = pl.DataFrame(rows).sort(order, "seed")
    frames = {
        "runs": runs.with_columns(pl.lit(args.primitives, pl.Int64).alias("primitives")),
        "curves": pl.DataFrame(curve_rows),
    }
    publish(save_data(args.results, args.name, "economy", frames), args.results)


if __name__ == "__main__":
    main()
