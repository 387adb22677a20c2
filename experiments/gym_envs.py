"""Societies on Gymnasium envs against the monolithic PPO (`experiments/gymnasium.py`).

Per env, arm and seed, one learning run of `--steps` env steps through `market simulate`'s
own path (`--task gym:ENV --learn`, GYM_PPO's settings), its ledger audited: the cloned
society under CCV (`ccv`) or the bucket brigade (`bb`), or one PPO policy over the actions
(`monolithic`). From the audited ledger, per finished episode in the order they end: the env
steps taken by then (transformations before its EpisodeEnd) and its return in the env's
units (`market.gym_tasks.env_return`: the credit undone by the run's reward map); the wall
seconds by then are the run's clock at its end.
"Solved" is the env's usual criterion: the mean return of the last `WINDOW` finished
episodes first at or above its threshold (CartPole-v1 475, Acrobot-v1 -100, LunarLander-v3
200, which needs the box2d extra), the one CleanRL's figures use
(docs/results/data/cleanrl.csv); MiniGrid-DoorKey-5x5-v0 has no usual one (`THRESHOLDS`).
Saves runs.parquet (one row per run) and curves.parquet (that rolling mean at most `POINTS`
times a run) under <results>/data/<name>/, then writes the table and plot they make under
<results>/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
from generated import ResultsError, Table, first_reached, frame, read, spread
from pool import Row

from analyses.wealth import finished_episodes
from ledger.units import UNIT
from market.gym_tasks import env_return
from simulation.config import Simulation
from simulation.rundir import ENV
from simulation.runner import prepare

THRESHOLDS = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "LunarLander-v3": 200.0,
    "MiniGrid-DoorKey-5x5-v0": 0.9,
}
"""Each env's solved threshold on the mean return of the last WINDOW episodes. MiniGrid
registers none; a success pays 1 - 0.9 x steps / 250 on DoorKey-5x5, so 0.9 is every
episode opening the door and reaching the goal within 27 steps on average (the shortest
route takes about 10)."""
WINDOW = 100
POINTS = 200
ARMS: dict[str, dict[str, Any]] = {
    "ccv": {"learn": True, "mechanism": "ccv"},
    "bb": {"learn": True, "mechanism": "bb"},
    "monolithic": {"learn": True, "monolithic": True},
}
"""Each arm's `market simulate` settings."""
LABELS = {"ccv": "society, CCV", "bb": "society, bucket brigade", "monolithic": "monolithic PPO"}


def run_one(
    env: str, arm: str, seed: int, steps: int, out: Path, settings: dict[str, Any] | None = None
) -> tuple[Row, list[Row]]:
    """One run (`settings` added to its arm's): its summary row and its curve (the rolling
    mean return against env steps)."""
    given = settings or {}
    sim = Simulation.model_validate({"task": f"gym:{env}", "steps": steps, "seed": seed,
                                     **ARMS[arm], **given})  # fmt: skip
    run_dir = out / f"{env}-{arm}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run of an earlier call
    began = time.perf_counter()
    prepared = prepare(sim, run_dir)
    made = json.loads((run_dir / ENV).read_text(encoding="utf-8"))
    finished = prepared.execute()
    seconds = time.perf_counter() - began
    episodes = episode_table(finished.ledger.scan(), made["reward_scale"], made["reward_offset"])
    taken = finished.summary.steps
    solved = solved_at(episodes, THRESHOLDS[env])
    row: Row = {
        "env": env, "arm": arm, "seed": seed, "steps": taken, "seconds": seconds,
        "episodes": episodes.height,
        "solved_at": solved,
        "solved_seconds": None if solved is None else seconds * solved / max(taken, 1),
        "final_return": float(episodes["ret"].tail(WINDOW).to_numpy().mean()),
        "steps_per_s": taken / seconds,
        "audit_clean": finished.report is not None and finished.report.ok,
        "settings": described(given),
    }  # fmt: skip
    every = max(1, episodes.height // POINTS)
    curve = episodes.gather_every(every).select("env_steps", "rolling")
    points = [{"env": env, "arm": arm, "seed": seed, **p} for p in curve.to_dicts()]
    return row, points


def described(settings: dict[str, Any]) -> str:
    """Settings over an arm's, as `--ppo` and the reward flags spell them ("" for none)."""
    flat = {**settings.get("ppo", {}), **{k: v for k, v in settings.items() if k != "ppo"}}
    return ",".join(f"{k}={v:g}" for k, v in flat.items())


def episode_table(events: pl.LazyFrame, scale: float, offset: float = 0.0) -> pl.DataFrame:
    """Per finished episode, in the order they end: the env steps taken by then, its return
    in the env's units (`env_return` of its credit under the run's reward map), and the mean
    return of the last WINDOW episodes."""
    credit = pl.col("units").cast(pl.Float64) / UNIT
    return (
        finished_episodes(events)
        .with_columns(env_return(credit, pl.col("steps"), scale, offset).alias("ret"))
        .with_columns(pl.col("ret").rolling_mean(WINDOW).alias("rolling"))
        .select("env_steps", "ret", "rolling")
    )


def solved_at(episodes: pl.DataFrame, threshold: float) -> int | None:
    """The env steps taken when the rolling mean return first reaches `threshold`."""
    solved: int | None = first_reached(episodes, "rolling", threshold)
    return solved


COLUMNS = (
    ("env steps to solve", "solved_at", "{:,.0f}"),
    ("wall s to solve", "solved_seconds", "{:,.0f}"),
    ("final return (last 100)", "final_return", "{:,.1f}"),
    ("env steps/s", "steps_per_s", "{:,.0f}"),
)


def _return_format(env: str) -> str:
    """Returns to one decimal, or three where the solved threshold is below 10 (DoorKey's
    returns lie in [0, 1])."""
    return "{:,.3f}" if abs(THRESHOLDS.get(env, 10.0)) < 10 else "{:,.1f}"


def tables(data: Path) -> list[Table]:
    """Per env and arm, over seeds: how many solved, COLUMNS as median [min, max], and
    whether every ledger audited clean; then the returns other implementations published for
    these envs (docs/results/data/published.csv), and, where the data hold CartPole,
    CleanRL's PPO run here on the same criterion. Tables are named after the data's
    directory (`--name`)."""
    runs = read(data, "runs")
    if "settings" not in runs.columns:  # saved before runs recorded their settings
        runs = runs.with_columns(pl.lit("").alias("settings"))
    several = runs["settings"].n_unique() > 1
    rows = []
    for (env, arm, given), part in runs.group_by("env", "arm", "settings", maintain_order=True):
        row = {"env": str(env), "run": LABELS[str(arm)]}
        if several:
            row["settings"] = str(given) or "GYM_PPO's"
        row |= {"seeds": str(part.height),
                "solved": f"{part['solved_at'].is_not_null().sum()} of {part.height}"}  # fmt: skip
        row |= {
            head: spread(part[col], _return_format(str(env)) if col == "final_return" else fmt)
            for head, col, fmt in COLUMNS
        }
        row["audits"] = "clean" if part["audit_clean"].all() else "NOT CLEAN"
        rows.append(row)
    made = [Table(data.name, frame(rows))]
    envs = runs["env"].unique(maintain_order=True).to_list()
    if published := _published(data.parent / "published.csv", envs):
        made.append(Table(f"{data.name}-published", frame(published)))
    if "CartPole-v1" not in envs:
        return made
    peers = data.parent / "cleanrl.csv"
    if not peers.is_file():
        raise ResultsError(f"{peers}: no CleanRL figures")
    cleanrl = pl.read_csv(peers)
    peer = {
        "env": "CartPole-v1",
        "run": "CleanRL ppo.py (its defaults)",
        "seeds": str(cleanrl.height),
        "env steps to solve": spread(cleanrl["steps_to_solve"]),
        "env steps/s": spread(cleanrl["steps_per_s"]),
        "source": str(cleanrl["source"][0]),
    }
    made.append(Table(f"{data.name}-cleanrl", frame([peer])))
    return made


def _published(peers: Path, envs: list[str]) -> list[dict[str, str]]:
    """The published returns of other implementations on `envs`, as their pages give them
    (`peers`: one row per env and implementation, with its source); none without the file."""
    if not peers.is_file():
        return []
    listed = pl.read_csv(peers).filter(pl.col("env").is_in(envs))
    return [
        {
            "env": row["env"],
            "run": f"{row['implementation']} (published)",
            "seeds": str(row["seeds"]),
            "env steps per run": f"{row['env_steps']:,}",
            "return": f"{row['return']:.2f} ± {row['spread']:.2f}",
            "source": row["source"],
        }
        for row in listed.iter_rows(named=True)
    ]


def plots(data: Path, img: Path) -> None:
    """The rolling mean return against env steps, one line per run, per env: named after
    the data's directory (and the env, where the data hold several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read(data, "curves")
    if "settings" not in curves.columns:
        curves = curves.with_columns(pl.lit("").alias("settings"))
    img.mkdir(parents=True, exist_ok=True)
    # a line's colour tells its arm, or its settings where the data hold several
    by = "settings" if curves["settings"].n_unique() > 1 else "arm"
    keys = curves[by].unique(maintain_order=True).to_list()
    arms = {"ccv": "tab:blue", "bb": "tab:green", "monolithic": "tab:orange"}
    colours = arms if by == "arm" else {k: f"C{i}" for i, k in enumerate(keys)}
    several = curves["env"].n_unique() > 1
    for (env,), part in curves.group_by("env", maintain_order=True):
        fig, ax = plt.subplots(figsize=(7, 4))
        labelled: set[str] = set()
        runs = dict.fromkeys([by, "arm", "seed"])  # a run's keys, `by` first (once)
        for (key, *_), run in part.group_by(*runs, maintain_order=True):
            name = LABELS[str(key)] if by == "arm" else str(key) or "GYM_PPO's"
            label = None if key in labelled else name
            labelled.add(str(key))
            ax.plot(run["env_steps"], run["rolling"], color=colours[str(key)], lw=1, label=label)
        threshold = THRESHOLDS[str(env)]
        ax.axhline(threshold, color="grey", ls="--", lw=1, label="solved")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, threshold), max(high, threshold + 0.05 * abs(high - low)))
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"mean return of the last {WINDOW} episodes")
        ax.set_title(f"gym:{env}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{data.name}-{str(env).lower()}" if several else data.name
        fig.savefig(img / f"{name}.png", dpi=110)
        plt.close(fig)
