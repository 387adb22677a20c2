"""The tabular results of Chang et al. (2020) on this engine: Bandit, Chain, Duality.

Every run is a learning society of Beta-bid PPO primitives with methods.md's settings, its
ledger on disk, for a fixed budget of env steps; the step (and wall second) at which the
run first meets its task's criterion is recorded, and its audited ledger is folded into the
train return of every epoch of EPOCH env steps, the authors' unit. Saves runs.parquet,
curves.parquet and epochs.parquet under <results>/data/tabular/, then writes the tables
they make (median and range over seeds; against the authors' code, like for like) and the
PNG learning curves under <results>/ (experiments/regenerate.py remakes them). A run of a
subset (--tasks, --labels) replaces the saved data with its own runs.

    python experiments/tabular.py --seeds 5 [--workers 2] [--scale 1.0]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from generated import RESULTS, ResultsError, Table, frame, publish, read, save_data, spread
from numpy.typing import NDArray
from pool import run_each

from agents.learning import run_learning
from agents.settings import PPOConfig
from ledger.disk import DiskLedger
from ledger.units import UNIT
from market.audit import audit
from market.core import EpisodeResult
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
TRAIN_THRESHOLD = {"bandit": 0.75, "chain": 0.75, "duality": 4.5}
"""The peer's thresholds on the train return (docs/results/data/peers.csv), per task."""
WINDOW = 2000
"""Recent episodes (Bandit) or 100 recent episodes (others) that the criterion averages."""
EPOCH = 4096
"""Env steps per epoch, as in the authors' code (docs/results/data/peers.csv)."""


def run_one(
    setting: Setting, seed: int, scale: float
) -> tuple[dict[str, object], list[dict[str, object]], pl.DataFrame]:
    """One learning run: its summary row, its learning curve and its epoch table."""
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
        epochs = epoch_table(ledger.scan(), tracker.epoch_seconds)
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
    keys = [pl.lit(setting.task).alias("task"), pl.lit(setting.label).alias("label")]
    return row, curve, epochs.select(*keys, pl.lit(seed, pl.Int64).alias("seed"), pl.all())


def epoch_table(events: pl.LazyFrame, seconds: list[float]) -> pl.DataFrame:
    """Per complete epoch of EPOCH env steps, folded from a ledger's EpisodeEnd events in
    ledger order: the episodes that ended in it (an episode belongs to the epoch in which
    the env steps of the finished episodes pass its end), their mean return (the train
    return) and the share that earned 0.8 (Bandit: arm 3's payoff), with the wall seconds
    `seconds[k]` at which epoch k was complete."""
    ends = events.filter(pl.col("kind") == "episode_end").select("steps", "episode_return")
    clock = pl.col("steps").cum_sum()
    ret = pl.col("episode_return") / UNIT
    table = (
        ends.with_columns(((clock - 1) // EPOCH).alias("epoch"), clock.max().alias("total"))
        .group_by("epoch", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int64).alias("episodes"),
            ret.mean().alias("train_return"),
            ((ret - 0.8).abs() < 1e-9).mean().alias("share_08"),
            pl.col("total").first(),
        )
        .filter((pl.col("epoch") + 1) * EPOCH <= pl.col("total"))
        .drop("total")
        .collect()
    )
    return table.with_columns(pl.Series("seconds", seconds[: table.height], pl.Float64))


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
        self.epoch_seconds: list[float] = []
        """Wall seconds at which the finished episodes' env steps passed each EPOCH."""
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
        while self.steps >= (len(self.epoch_seconds) + 1) * EPOCH:
            self.epoch_seconds.append(time.perf_counter() - self.start)
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


COLUMNS = (
    ("env steps to criterion", "steps_to_criterion", "{:,.0f}"),
    ("seconds to criterion", "seconds_to_criterion", "{:.1f}"),
    ("final score", "final_score", "{:.3f}"),
    ("mean abs(bid - Q*)", "mean_abs_bid_minus_q", "{:.3f}"),
    ("env steps/s", "steps_per_s", "{:,.0f}"),
    ("greedy return", "greedy_return", "{:.2f}"),
)
"""The summary table's spread columns: heading, runs.parquet column, format."""
PEERS = {
    "bandit": ("cloned Vickrey", "cloned Vickrey"),
    "chain": ("CCV", "cloned CCV"),
    "duality": ("CCV", "cloned CCV"),
}
"""Per task, our setting (label, description) set against the peer's run of it (the
peer's Bandit ran cloned CCV)."""
MOVING = 5
"""Epochs in the moving average of the peer's second criterion."""


def tables(data: Path) -> list[Table]:
    """The tables of the saved data in `data` (runs.parquet, epochs.parquet) and of the
    peer's figures in `data`'s parent (peers.csv)."""
    runs, epochs = read(data, "runs"), read(data, "epochs")
    peers_csv = data.parent / "peers.csv"
    if not peers_csv.is_file():
        raise ResultsError(f"{peers_csv}: no peer figures")
    peers = pl.read_csv(peers_csv)
    return [
        summary_table(runs),
        Table("tabular-epochs", epoch_criteria(epochs)),
        Table("tabular-peers", peer_table(epochs, peers)),
        Table("tabular-peers-end", peer_end_table(epochs, runs, peers)),
    ]


def summary_table(runs: pl.DataFrame) -> Table:
    """Per setting, over seeds: how many met the task's criterion, then COLUMNS as median
    [min, max] (steps and seconds over the seeds that met it); the greedy society, mean
    bids and whether every ledger audited clean."""
    rows = []
    for (task, label), part in runs.group_by("task", "label", maintain_order=True):
        part = part.sort("seed")
        seed0 = part.row(0, named=True)
        row = {"task": str(task), "setting": str(label), "seeds": str(part.height)}
        row["reached"] = str(part["steps_to_criterion"].is_not_null().sum())
        for heading, col, fmt in COLUMNS:
            row[heading] = spread(part[col], fmt) if col in part.columns else "-"
        row["greedy (seed 0)"] = str(seed0["greedy"])
        row["mean bids (seed 0)"] = str(seed0.get("mean_bids") or "-")
        row["audit clean"] = str(bool(part["audit_clean"].all()))
        rows.append(row)
    return Table("tabular", frame(rows))


def first_epochs(epochs: pl.DataFrame, measure: str, threshold: float) -> pl.DataFrame:
    """Per run (task, label, seed): the first complete epoch whose `measure` is at least
    `threshold` ("single") and the first whose mean over it and the MOVING - 1 epochs
    before is ("moving"), as env steps at the epoch's end and wall seconds; null if none."""
    by_run = ("task", "label", "seed")
    ordered = epochs.sort(*by_run, "epoch").with_columns(
        pl.col(measure).rolling_mean(MOVING).over(by_run).alias("moving"),
        pl.col(measure).alias("single"),
    )
    out = ordered.select(*by_run).unique(maintain_order=True)
    for name in ("single", "moving"):
        hit = (
            ordered.filter(pl.col(name) >= threshold)
            .group_by(by_run)
            .agg(
                ((pl.col("epoch").min() + 1) * EPOCH).alias(f"{name}_steps"),
                pl.col("seconds").sort_by("epoch").first().alias(f"{name}_seconds"),
            )
        )
        out = out.join(hit, on=by_run, how="left")
    return out


def epoch_criteria(epochs: pl.DataFrame) -> pl.DataFrame:
    """Every setting under the peer's two criteria on the train return (each task's
    threshold in TRAIN_THRESHOLD): seeds that met it, env steps and seconds to it."""
    rows = []
    for task, threshold in TRAIN_THRESHOLD.items():
        hits = first_epochs(epochs.filter(pl.col("task") == task), "train_return", threshold)
        for (label,), part in hits.group_by("label", maintain_order=True):
            row = {"task": task, "setting": str(label), "train return at least": f"{threshold}"}
            for name, heading in (("single", "one epoch"), ("moving", f"{MOVING}-epoch mean")):
                steps = part[f"{name}_steps"]
                row[f"{heading}: seeds"] = f"{steps.is_not_null().sum()}/{part.height}"
                row[f"{heading}: env steps"] = spread(steps)
                row[f"{heading}: seconds"] = spread(part[f"{name}_seconds"], "{:.1f}")
            rows.append(row)
    made: pl.DataFrame = frame(rows)
    return made


def peer_table(epochs: pl.DataFrame, peers: pl.DataFrame) -> pl.DataFrame:
    """Per task and criterion of the peer's (a single epoch, or the moving mean of MOVING
    epochs, of the train return at or above its threshold): our env steps and seconds to
    it (median [min, max] over seeds), the peer's one seed, and the peer's figure divided
    by our median (a lower bound where the peer never met it)."""
    rows = []
    for peer in peers.iter_rows(named=True):
        hits = first_epochs(_ours(epochs, peer["task"]), "train_return", peer["threshold"])
        name = "single" if peer["criterion"] == "single epoch" else "moving"
        steps, seconds = hits[f"{name}_steps"], hits[f"{name}_seconds"]
        row = _peer_head(peer)
        row["criterion: train return at least"] = f"{peer['threshold']}, {peer['criterion']}"
        row["ours: seeds that met it"] = f"{steps.is_not_null().sum()}/{steps.len()}"
        row["ours: env steps"] = spread(steps)
        row["ours: seconds"] = spread(seconds, "{:.1f}")
        met = bool(peer["reached"])
        bound = "" if met else "more than "
        peer_steps = peer["steps"] if met else peer["run_steps"]
        peer_seconds = peer["seconds"] if met else peer["run_seconds"]
        row["peer: env steps"] = f"{'' if met else 'not met by '}{peer_steps:,}"
        row["peer: seconds"] = f"{'' if met else 'not met by '}{peer_seconds:.1f}"
        row["env steps, peer / our median"] = _ratio(bound, peer_steps, steps.median())
        row["seconds, peer / our median"] = _ratio(bound, peer_seconds, seconds.median())
        if not met:  # a lower bound under 1 bounds nothing: the peer's run ended first
            for key in ("env steps, peer / our median", "seconds, peer / our median"):
                if row[key].startswith("more than 0."):
                    row[key] = "- (the peer's run ended before our median)"
        rows.append(row)
    made: pl.DataFrame = frame(rows)
    return made


def peer_end_table(epochs: pl.DataFrame, runs: pl.DataFrame, peers: pl.DataFrame) -> pl.DataFrame:
    """Per task: the train return of the epoch that holds the peer's last env step, ours
    (median [min, max] over seeds) and the peer's, side by side; then env steps per second
    over the whole run, and ours divided by the peer's."""
    rows = []
    for peer in peers.unique("task", keep="first", maintain_order=True).iter_rows(named=True):
        mine = _ours(epochs, peer["task"])
        last = (pl.col("epoch") + 1) * EPOCH >= peer["run_steps"]
        at = mine.filter(last).group_by("seed").agg(pl.col("train_return").first())
        label = PEERS[peer["task"]][0]
        speed = runs.filter((pl.col("task") == peer["task"]) & (pl.col("label") == label))
        row = _peer_head(peer)
        row["env step"] = f"{peer['run_steps']:,}"
        row["ours: train return"] = spread(at["train_return"], "{:.3f}")
        row["peer: train return"] = f"{peer['end_return']:.3f}"
        row["ours: env steps/s"] = spread(speed["steps_per_s"])
        row["peer: env steps/s"] = f"{peer['steps_per_s']:,}"
        ratio = _ratio("", speed["steps_per_s"].median(), peer["steps_per_s"])
        row["env steps/s, our median / peer"] = ratio
        rows.append(row)
    made: pl.DataFrame = frame(rows)
    return made


def _ours(epochs: pl.DataFrame, task: str) -> pl.DataFrame:
    """The epochs of our setting set against the peer's run of `task`."""
    return epochs.filter((pl.col("task") == task) & (pl.col("label") == PEERS[task][0]))


def _peer_head(peer: dict[str, object]) -> dict[str, str]:
    ours = PEERS[str(peer["task"])][1]
    return {"task": str(peer["task"]), "ours": ours, "peer": str(peer["setting"]),
            "peer seeds": f"{peer['seeds']} (one seed, not a distribution)"}  # fmt: skip


def _ratio(bound: str, top: object, bottom: object) -> str:
    """`top / bottom` as `1.23x`, after `bound`; `-` if either is missing."""
    if not isinstance(top, int | float) or not isinstance(bottom, int | float):
        return "-"
    return f"{bound}{top / bottom:.2f}x"


def plots(data: Path, img: Path) -> None:
    """One PNG per task: each setting's windowed score against env steps, a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read(data, "curves")
    img.mkdir(parents=True, exist_ok=True)
    for task, ylabel in (
        ("bandit", f"share of arm-3 wins (last {WINDOW})"),
        ("chain", "train return (last 100 episodes)"),
        ("duality", "train return (last 100 episodes)"),
    ):
        part = curves.filter(pl.col("task") == task)
        if part.is_empty():
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = list(part["label"].unique(maintain_order=True))
        for k, label in enumerate(labels):
            runs = part.filter(pl.col("label") == label)
            for i, seed in enumerate(runs["seed"].unique().sort()):
                r = runs.filter(pl.col("seed") == seed)
                ax.plot(r["steps"], r["score"], color=f"C{k}", alpha=0.6,
                        label=label if i == 0 else None)  # fmt: skip
        ax.set_title(f"{task}: learning curves, one line per seed")
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / f"{task}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    parser.add_argument("--tasks", default="bandit,chain,duality")
    parser.add_argument("--labels", default="", help="only these settings (comma-separated)")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved data, tables and plots go here"
    )
    args = parser.parse_args()
    tasks = set(args.tasks.split(","))
    labels = set(args.labels.split(",")) if args.labels else None
    chosen = [s for s in SETTINGS if s.task in tasks and (labels is None or s.label in labels)]
    jobs = [(s, seed, args.scale) for s in chosen for seed in range(args.seeds)]
    done = run_each(run_one, jobs, args.workers)
    frames = {
        "runs": pl.DataFrame([row for row, _, _ in done]).sort("task", "label", "seed"),
        "curves": pl.DataFrame([p for _, curve, _ in done for p in curve]),
        "epochs": pl.concat([e for _, _, e in done]).sort("task", "label", "seed", "epoch"),
    }
    data = save_data(args.results, "tabular", "tabular", frames)
    publish(data, args.results)


if __name__ == "__main__":
    main()
