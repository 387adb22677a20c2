"""Mental Rotation (Chang et al. 2020) on this engine: a cloned CCV society of six affine
functions learns to undo a digit's turn and shift, and is scored on held-out digits.

Per seed: train the `mental-rotation` preset (its ledger on disk, audited), then evaluate the
final snapshot with frozen learners (bids sampled, no updates) on `mental-rotation-test`.
Saves runs.parquet, choices.parquet and curves.parquet under <results>/data/<name>/, then
writes the tables they make (median and range over seeds; the functions chosen per input
kind) and the plot under <results>/ (experiments/regenerate.py remakes them).

    python experiments/mental_rotation.py --seeds 5 [--workers 2] [--steps 60000]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import time
from collections import deque
from pathlib import Path

import numpy as np
import polars as pl
from generated import RESULTS, Table, frame, median, publish, read, save_data, spread
from pool import Row, run_all

from ledger.units import UNIT
from market.core import EpisodeResult
from market.mental_rotation import KINDS, PRIMITIVES, input_kind, solution
from simulation.config import resolve
from simulation.runner import prepare

WINDOW = 500
"""Recent training episodes the curve averages."""
PAPER = 0.93
"""The paper's test reward, on MNIST (a reference line, not a like-for-like figure)."""


def run_one(seed: int, steps: int, episodes: int, out: Path) -> tuple[Row, list[Row]]:
    """Train one society and test it: its summary row (with choices) and its curve."""
    curve: list[Row] = []
    recent: deque[float] = deque(maxlen=WINDOW)
    taken = 0

    def on_episode(result: EpisodeResult) -> None:
        nonlocal taken
        taken += result.steps
        recent.append(result.episode_return / UNIT)
        if len(recent) == WINDOW and (not curve or taken - int(str(curve[-1]["steps"])) >= 2000):
            curve.append({"seed": seed, "steps": taken, "train_reward": float(np.mean(recent))})

    train_dir, test_dir = out / f"train-s{seed}", out / f"test-s{seed}"
    began = time.perf_counter()
    sim = resolve("mental-rotation", flags={"seed": seed, "steps": steps})
    trained = prepare(sim, train_dir).execute(on_episode)
    seconds = time.perf_counter() - began
    flags = {"task": "mental-rotation-test", "learn": True, "seed": seed,
             "init": str(train_dir), "frozen": True, "episodes": episodes}  # fmt: skip
    test = resolve(flags=flags)
    tested = prepare(test, test_dir).execute()
    choices = _choices(tested.ledger.scan())
    row: Row = {
        "seed": seed,
        "train_steps": taken,
        "train_seconds": seconds,
        "steps_per_s": taken / seconds,
        "final_train_reward": float(np.mean(recent)),
        "test_reward": tested.summary.mean_return / UNIT,
        "test_episodes": tested.summary.episodes,
        "solved_kinds": int(sum(bool(c["correct"]) for c in choices)),
        "audit_clean": trained.audited.ok and tested.audited.ok,
        "choices": choices,
    }
    return row, curve


def _choices(events: pl.LazyFrame) -> list[Row]:
    """Per input kind: the test reward and the society's most frequent pair of functions."""
    won = (
        events.filter(pl.col("kind") == "allocate")
        .select("episode", "step", "state", "primitive")
        .collect()
        .pivot(on="step", index="episode", values=["state", "primitive"])
    )
    ends = events.filter(pl.col("kind") == "episode_end").select("episode", "episode_return")
    kinds = won.with_columns(pl.Series("input_kind", input_kind(won["state_0"].to_numpy())))
    frame = kinds.join(ends.collect(), on="episode")  # each episode keeps its own kind
    rows: list[Row] = []
    for kind in range(len(KINDS)):
        part = frame.filter(pl.col("input_kind") == kind)
        if part.is_empty():
            continue
        pairs = part.group_by("primitive_0", "primitive_1").len().sort("len", descending=True)
        first, second, count = pairs.row(0)
        rows.append({
            "input_kind": KINDS[kind],
            "reward": float(part["episode_return"].mean()) / UNIT,  # type: ignore[arg-type]
            "chosen": f"{PRIMITIVES[first]}, {PRIMITIVES[second]}",
            "share": count / part.height,
            "correct": (first, second) == solution(kind),
        })  # fmt: skip
    return rows


COLUMNS = (
    ("test reward", "test_reward", "{:.3f}"),
    ("final train reward (last 500)", "final_train_reward", "{:.3f}"),
    ("train env steps", "train_steps", "{:,.0f}"),
    ("wall s (train)", "train_seconds", "{:,.0f}"),
    ("env steps/s", "steps_per_s", "{:,.0f}"),
)
"""The summary's spread columns: heading, runs.parquet column, format."""


def tables(data: Path) -> list[Table]:
    """The summary over seeds (COLUMNS as median [min, max], the kinds each seed solved,
    whether every audit was clean), then per input kind: the median test reward, the pair
    most seeds chose, how many seeds chose the right pair and the median share of episodes
    that pair won."""
    runs, choices = read(data, "runs").sort("seed"), read(data, "choices").sort("seed")
    summary = {"seeds": str(runs.height)}
    summary |= {heading: spread(runs[col], fmt) for heading, col, fmt in COLUMNS}
    summary["kinds solved (per seed)"] = ", ".join(str(v) for v in runs["solved_kinds"])
    summary["audits clean"] = str(bool(runs["audit_clean"].all()))
    kinds = [
        {
            "input kind": str(kind),
            "test reward (median)": median(part["reward"], "{:.3f}"),
            "chosen (most seeds)": str(part["chosen"].mode().sort().first()),
            "seeds correct": str(part["correct"].sum()),
            "share of episodes (median)": median(part["share"], "{:.2f}"),
        }
        for (kind,), part in choices.group_by("input_kind", maintain_order=True)
    ]
    return [Table(data.name, frame([summary])), Table(f"{data.name}-choices", frame(kinds))]


def plots(data: Path, img: Path) -> None:
    """The training reward against env steps, a line per seed, with the test reward's median
    and the paper's MNIST figure as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, runs = read(data, "curves"), read(data, "runs")
    img.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, seed in enumerate(curves["seed"].unique().sort()):
        r = curves.filter(pl.col("seed") == seed)
        ax.plot(r["steps"], r["train_reward"], color="C0", alpha=0.5,
                label="train reward, one line per seed" if i == 0 else None)  # fmt: skip
    test = float(runs["test_reward"].median())
    ax.axhline(test, color="C1", linestyle="--", label=f"test reward, median ({test:.3f})")
    ax.axhline(PAPER, color="grey", linestyle=":", label=f"the paper (MNIST), {PAPER}")
    ax.set_title("Mental Rotation: cloned CCV society of six affine functions")
    ax.set_xlabel("env steps (auctions; 2 per episode)")
    ax.set_ylabel(f"reward per episode (mean of last {WINDOW})")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(img / f"{data.name}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60_000, help="training env steps per seed")
    parser.add_argument("--episodes", type=int, default=2000, help="test episodes per seed")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/mental-rotation"))
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved data, tables and plots go here"
    )
    parser.add_argument("--name", default="mental-rotation", help="the saved data's directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, args.steps, args.episodes, args.out) for seed in range(args.seeds)]
    rows, curve_rows = run_all(run_one, jobs, args.workers)
    choices = pl.DataFrame([{"seed": r["seed"], **c} for r in rows for c in r.pop("choices")])
    frames = {
        "runs": pl.DataFrame(rows).sort("seed"),
        "choices": choices.sort("seed"),
        "curves": pl.DataFrame(curve_rows),
    }
    publish(save_data(args.results, args.name, "mental-rotation", frames), args.results)


if __name__ == "__main__":
    main()
