"""Learning throughput: env steps/s of collection and of PPO updates, separately.

A learning society of Beta-bid PPO primitives (methods.md settings) on each tabular task,
cloned CCV, the on-disk ledger on, for a fixed number of env steps, `--concurrency`
episodes at once (the round kernel). Collection time is the run's wall time minus the time
spent inside PPO updates. Torch's one-time warm-up (about 0.7 s of lazy imports at the first
optimiser step) is paid before the clock starts, by a throwaway learner.

    python benchmarks/learning.py [--steps 200000] [--concurrency 128]

Saves the measurements under docs/results/data/learning-throughput/ and writes the table
from them (docs/results.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium

import argparse
import tempfile
import time

import numpy as np
import polars as pl
import torch
from generated import RESULTS, Table, frame, publish, read, save_data

from agents.learning import LearningSociety
from agents.ppo_bidder import PPOBidders
from agents.settings import PPOConfig
from ledger.disk import DiskLedger
from market.bus import Bus
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import Task, make_task


def measure(task_name: str, steps: int, concurrency: int) -> dict[str, float]:
    """Wall seconds of a learning run, split into collection and update."""
    task = make_task(task_name)
    ppo = PPOConfig()
    config = RunConfig(
        task=task_name,
        mechanism="ccv",
        bidder="ppo",
        episodes=None,
        steps=steps,
        concurrency=concurrency,
        learner=ppo.model_dump(),
    )
    learner = LearningSociety(task, Society.of(task), ppo, seed=0)
    warm_up(task, learner.agent.primitive_of.tolist())
    spent = {"update": 0.0}
    update = learner.agent.update

    def timed_update(*args: object) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return update(*args)  # type: ignore[arg-type]
        finally:
            spent["update"] += time.perf_counter() - start

    learner.agent.update = timed_update  # type: ignore[method-assign, assignment]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = DiskLedger(Path(tmp) / "ledger")
        bus = Bus(ledger)
        learner.attach(bus)
        start = time.perf_counter()
        summary = simulate(config, ledger, learner, bus=bus)
        total = time.perf_counter() - start
    samples = sum(ppo.batch * learner.agent.n_primitives for _ in learner.updates)
    return {
        "steps": float(steps),
        "total": total,
        "update": spent["update"],
        "collect": total - spent["update"],
        "updates": float(len(learner.updates)),
        "samples": float(samples),
        "events": float(summary.events),
    }


def warm_up(task: Task, primitive_of: list[int]) -> None:
    """One tiny update of a throwaway learner, so torch's lazy imports happen off the clock."""
    agent = PPOBidders(task.n_states, tuple(primitive_of), PPOConfig(batch=8, minibatch=8))
    shape = (agent.n_primitives, 8)
    agent.update(np.zeros(shape, dtype=np.int64), np.full(shape, 0.5), np.zeros(shape))


TARGET = 25_000
"""Env steps/s on one core with the ledger on disk."""


def tables(data: Path) -> list[Table]:
    """Per task: env steps/s of the run, of collection and of the updates; from the saved
    measurements."""
    rows = [
        {
            "task": m["task"],
            "env steps/s": f"{m['steps'] / m['total']:,.0f}",
            "collection steps/s": f"{m['steps'] / m['collect']:,.0f}",
            "update samples/s": f"{m['samples'] / max(m['update'], 1e-9):,.0f}",
            "updates": f"{m['updates']:.0f}",
            "share in updates": f"{m['update'] / m['total']:.0%}",
            "ledger events/s": f"{m['events'] / m['total']:,.0f}",
            f"target {TARGET:,} env steps/s": "met" if m["steps"] / m["total"] >= TARGET
            else "not met",
        }
        for m in read(data, "runs").iter_rows(named=True)
    ]  # fmt: skip
    return [Table("learning-throughput", frame(rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument(
        "--name", default="learning-throughput", help="the saved data's directory name"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        {
            "task": task,
            "concurrency": args.concurrency,
            **measure(task, args.steps, args.concurrency),
        }
        for task in ("bandit", "chain", "duality")
    ]
    data = save_data(args.results, args.name, "learning-throughput", {"runs": pl.DataFrame(rows)})
    publish(data, args.results)


if __name__ == "__main__":
    main()
