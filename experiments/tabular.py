"""The tabular results of Chang et al. (2020) on this engine: Bandit, Chain, Duality.

Every run is a learning society of Beta-bid PPO primitives with methods.md's settings, its
ledger on disk, for a fixed budget of env steps; the step (and wall second) at which the
run first meets its task's criterion is recorded. Prints markdown tables (median and range
over seeds) and writes runs.parquet, curves.parquet and PNG learning curves to --out.

    python experiments/tabular.py --seeds 5 [--workers 2] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from pool import run_all

from agents.learning import run_learning
from agents.settings import PPOConfig
from ledger.disk import DiskLedger
from ledger.units import UNIT
from market.audit import audit
from market.kernel import EpisodeResult
from market.run import RunConfig
from market.tasks import Task, make_task


@dataclass(frozen=True)
class Setting:
    """One column of the paper's comparisons."""

    task: str
    mechanism: str
    cloned: bool
    label: str
    budget: int
    """Env steps per run at --scale 1."""
    target: float
    """The criterion on the recent train return (Bandit: the share of arm-3 wins)."""


SETTINGS = (
    Setting("bandit", "v", True, "cloned Vickrey", 1_500_000, 0.9),
    Setting("bandit", "fp", True, "first price", 1_500_000, 0.9),
    Setting("bandit", "v", False, "solitary Vickrey", 1_500_000, 0.9),
    Setting("bandit", "env", True, "environment reward", 1_500_000, 0.9),
    Setting("chain", "ccv", True, "CCV", 1_800_000, 0.75),
    Setting("chain", "v", True, "Vickrey", 1_800_000, 0.75),
    Setting("chain", "bb", True, "bucket brigade", 1_800_000, 0.75),
    Setting("duality", "ccv", True, "CCV", 1_800_000, 4.5),
)
WINDOW = 2000
"""Recent episodes (Bandit) or 100 recent episodes (others) that the criterion averages."""


def run_one(
    setting: Setting, seed: int, scale: float
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """One learning run: its summary row and its learning curve."""
    torch.set_num_threads(1)
    task = make_task(setting.task)
    ppo = PPOConfig()
    config = RunConfig(
        task=setting.task,
        mechanism=setting.mechanism,
        bidder="ppo",
        cloned=setting.cloned,
        episodes=None,
        steps=int(setting.budget * scale),
        seed=seed,
        concurrency=128,
        learner=ppo.model_dump(),
    )
    tracker = _Tracker(setting, budget=int(setting.budget * scale))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = DiskLedger(Path(tmp) / "ledger")
        summary, learner = run_learning(config, ledger, tracker.on_episode)
        seconds = time.perf_counter() - tracker.start
        report = audit(ledger)
        last = ledger.scan().filter(pl.col("kind") == "allocate").tail(WINDOW).collect()
    row: dict[str, object] = {
        **asdict(setting),
        "seed": seed,
        "steps": tracker.steps,
        "seconds": seconds,
        "steps_per_s": tracker.steps / seconds,
        "steps_to_criterion": tracker.hit_steps,
        "seconds_to_criterion": tracker.hit_seconds,
        "final_score": tracker.score(),
        "audit_clean": report.ok,
        "events": summary.events,
    }
    means = learner.agent.mean_bids(np.arange(task.n_states))
    row |= _task_metrics(task, setting, means, last)
    curve = [
        {**p, "label": setting.label, "task": setting.task, "seed": seed} for p in tracker.curve
    ]
    return row, curve


class _Tracker:
    """Follows a run's recent score, the first time it meets the criterion, and its curve."""

    def __init__(self, setting: Setting, budget: int) -> None:
        self.setting, self.every = setting, max(budget // 100, 1)
        self.window: deque[float] = deque(maxlen=WINDOW if setting.task == "bandit" else 100)
        self.steps, self.next_point = 0, 0
        self.total = 0.0
        self.hit_steps: int | None = None
        self.hit_seconds: float | None = None
        self.curve: list[dict[str, object]] = []
        self.start = time.perf_counter()

    def score(self) -> float:
        """The recent train return (Bandit: the share of episodes arm 3 won).

        Speed: a running sum, not a mean over the window per episode (Bandit has 1.5M
        one-step episodes).
        """
        return self.total / len(self.window) if self.window else float("nan")

    def on_episode(self, result: EpisodeResult) -> None:
        self.steps += result.steps
        ret = result.episode_return / UNIT
        bandit = self.setting.task == "bandit"
        value = float(abs(ret - 0.8) < 1e-9) if bandit else ret
        if len(self.window) == self.window.maxlen:
            self.total -= self.window[0]
        self.window.append(value)
        self.total += value
        full = len(self.window) == self.window.maxlen
        if self.hit_steps is None and full and self.score() >= self.setting.target:
            self.hit_steps, self.hit_seconds = self.steps, time.perf_counter() - self.start
        if self.steps >= self.next_point:
            elapsed = time.perf_counter() - self.start
            self.curve.append({"steps": self.steps, "score": self.score(), "seconds": elapsed})
            self.next_point += self.every


def _task_metrics(
    task: Task, setting: Setting, means: NDArray[np.float64], last: pl.DataFrame
) -> dict[str, object]:
    """What the paper compares: bids against Q*, the greedy society's choices and return,
    from each primitive's mean bid in every state (`means`, (P, n_states)) and the run's last
    allocations (`last`: state, primitive, amount in units)."""
    q = task.q_star(0.99)
    greedy = means.argmax(axis=0)  # (n_states,): the primitive with the highest mean bid
    out: dict[str, object] = {"greedy": "".join(task.primitive_names[g][-1] for g in greedy)}
    out["greedy_return"] = _greedy_return(task, greedy)
    if setting.task != "duality":  # Duality's Q* (up to 50 credit) lies outside the bid range
        won = last.select("state", "primitive", (pl.col("amount") / UNIT).alias("bid"))
        q_won = np.array([q[s, p] for s, p in won.select("state", "primitive").iter_rows()])
        out["mean_abs_bid_minus_q"] = float(np.mean(np.abs(won["bid"].to_numpy() - q_won)))
    if setting.task == "bandit":
        out["mean_bids"] = " ".join(f"{m:.2f}" for m in means[:, 0])
        out["arm3_share"] = float((last["primitive"].to_numpy() == 3).mean())
    return out


def _greedy_return(task: Task, greedy: np.ndarray) -> float:
    state, total = task.start, 0.0
    for _ in range(task.horizon):
        out = task.step(state, int(greedy[state]))
        total += out.reward
        state = out.next_state
        if out.done:
            break
    return total


def _tables(runs: pl.DataFrame) -> str:
    """Markdown: median [min, max] over seeds for each setting."""

    def cell(col: str) -> pl.Expr:
        c = pl.col(col).cast(pl.Float64)
        return pl.format(
            "{} [{}, {}]", c.median().round(3), c.min().round(3), c.max().round(3)
        ).alias(col)

    lines = []
    for task in ("bandit", "chain", "duality"):
        part = runs.filter(pl.col("task") == task)
        if part.is_empty():
            continue
        extra = ["arm3_share", "mean_bids"] if task == "bandit" else ["greedy_return", "greedy"]
        agg = part.group_by("label", maintain_order=True).agg(
            pl.len().alias("seeds"),
            pl.col("steps_to_criterion").is_not_null().sum().alias("reached"),
            cell("steps_to_criterion"),
            cell("seconds_to_criterion"),
            cell("final_score"),
            *([cell("mean_abs_bid_minus_q")] if task != "duality" else []),
            cell("steps_per_s"),
            *(cell(c) if c != "mean_bids" and c != "greedy" else pl.col(c).first() for c in extra),
            pl.col("audit_clean").all(),
        )
        lines.append(f"\n### {task}\n")
        lines.append("| " + " | ".join(agg.columns) + " |")
        lines.append("|" + "---|" * len(agg.columns))
        for row in agg.iter_rows():
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _plot(curves: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, ylabel in (
        ("bandit", f"share of arm-3 wins (last {WINDOW})"),
        ("chain", "train return (last 100 episodes)"),
        ("duality", "train return (last 100 episodes)"),
    ):
        part = curves.filter(pl.col("task") == task)
        if part.is_empty():
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for label in part["label"].unique(maintain_order=True):
            runs = part.filter(pl.col("label") == label)
            for i, seed in enumerate(runs["seed"].unique().sort()):
                r = runs.filter(pl.col("seed") == seed)
                ax.plot(
                    r["steps"],
                    r["score"],
                    color=f"C{list(part['label'].unique(maintain_order=True)).index(label)}",
                    alpha=0.6,
                    label=label if i == 0 else None,
                )
        ax.set_title(f"{task}: learning curves, one line per seed")
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{task}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    parser.add_argument("--tasks", default="bandit,chain,duality")
    parser.add_argument("--labels", default="", help="only these settings (comma-separated)")
    parser.add_argument("--out", type=Path, default=Path("experiments/out/tabular"))
    parser.add_argument("--report-only", action="store_true", help="redo tables and plots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        _plot(pl.read_parquet(args.out / "curves.parquet"), args.out)
        print(_tables(pl.read_parquet(args.out / "runs.parquet")))
        return
    tasks = set(args.tasks.split(","))
    labels = set(args.labels.split(",")) if args.labels else None
    chosen = [s for s in SETTINGS if s.task in tasks and (labels is None or s.label in labels)]
    jobs = [(s, seed) for s in chosen for seed in range(args.seeds)]
    rows, curves = run_all(run_one, [(s, seed, args.scale) for s, seed in jobs], args.workers)
    runs = pl.DataFrame(rows).sort("task", "label", "seed")
    runs.write_parquet(args.out / "runs.parquet")
    curve_frame = pl.DataFrame(curves)
    curve_frame.write_parquet(args.out / "curves.parquet")
    _plot(curve_frame, args.out)
    print(_tables(runs))


if __name__ == "__main__":
    main()
