"""Mental Rotation (Chang et al. 2020) on this engine: a cloned CCV society of six affine
functions learns to undo a digit's turn and shift, and is scored on held-out digits.

Per seed: train the `mental-rotation` preset (its ledger on disk, audited), then evaluate the
final snapshot with frozen learners (bids sampled, no updates) on `mental-rotation-test`.
Prints markdown tables (median and range over seeds; the functions chosen per input kind)
and writes runs.parquet, choices.parquet, curves.parquet and mental-rotation.png to --out.

    python experiments/mental_rotation.py --seeds 5 [--workers 2] [--steps 60000]
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from pathlib import Path

import numpy as np
import polars as pl
from pool import Row, run_all

from agents.runner import prepare
from agents.simulation import resolve
from ledger.units import UNIT
from market.kernel import EpisodeResult
from market.mental_rotation import KINDS, PRIMITIVES, input_kind, solution

WINDOW = 500
"""Recent training episodes the curve averages."""


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
    frame = won.join(ends.collect(), on="episode").with_columns(
        pl.Series("input_kind", input_kind(won["state_0"].to_numpy()))
    )
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


def _tables(runs: pl.DataFrame, choices: pl.DataFrame) -> str:
    def cell(col: str) -> str:
        c = runs[col].cast(pl.Float64).to_numpy()
        return f"{np.median(c):.3f} [{c.min():.3f}, {c.max():.3f}]"

    cols = ["test_reward", "final_train_reward", "train_steps", "train_seconds", "steps_per_s"]
    lines = ["| seeds | " + " | ".join(cols) + " | solved kinds | audits clean |", "|---" * 8 + "|"]
    solved = ", ".join(str(v) for v in runs["solved_kinds"].to_list())
    clean = bool(runs["audit_clean"].all())
    lines.append(
        f"| {runs.height} | " + " | ".join(cell(c) for c in cols) + f" | {solved} | {clean} |"
    )
    agg = choices.group_by("input_kind", maintain_order=True).agg(
        pl.col("reward").median().round(3).alias("test reward (median)"),
        pl.col("chosen").mode().first().alias("chosen (most seeds)"),
        pl.col("correct").sum().alias("seeds correct"),
        pl.col("share").median().round(2).alias("share of episodes"),
    )
    lines += ["", "| " + " | ".join(agg.columns) + " |", "|---" * len(agg.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in agg.iter_rows()]
    return "\n".join(lines)


def _plot(curves: pl.DataFrame, runs: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, seed in enumerate(curves["seed"].unique().sort()):
        r = curves.filter(pl.col("seed") == seed)
        ax.plot(r["steps"], r["train_reward"], color="C0", alpha=0.5,
                label="train reward, one line per seed" if i == 0 else None)  # fmt: skip
    test = float(runs["test_reward"].median())  # type: ignore[arg-type]
    ax.axhline(test, color="C1", linestyle="--", label=f"test reward, median ({test:.3f})")
    ax.axhline(0.93, color="grey", linestyle=":", label="the paper (MNIST), 0.93")
    ax.set_title("Mental Rotation: cloned CCV society of six affine functions")
    ax.set_xlabel("env steps (auctions; 2 per episode)")
    ax.set_ylabel(f"reward per episode (mean of last {WINDOW})")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "mental-rotation.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60_000, help="training env steps per seed")
    parser.add_argument("--episodes", type=int, default=2000, help="test episodes per seed")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/mental-rotation"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, args.steps, args.episodes, args.out) for seed in range(args.seeds)]
    rows, curve_rows = run_all(run_one, jobs, args.workers)
    choices = pl.DataFrame(
        [{"seed": r["seed"], **c} for r in rows for c in r.pop("choices")]  # type: ignore[attr-defined]
    )
    runs = pl.DataFrame(rows).sort("seed")
    curves = pl.DataFrame(curve_rows)
    runs.write_parquet(args.out / "runs.parquet")
    choices.write_parquet(args.out / "choices.parquet")
    curves.write_parquet(args.out / "curves.parquet")
    _plot(curves, runs, args.out)
    print(_tables(runs, choices.sort("seed")))


if __name__ == "__main__":
    main()
