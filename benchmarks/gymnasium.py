"""Gymnasium throughput: env steps/s of a society on CartPole-v1 against its ceilings.

Four rows, each for `--steps` env steps on one core (`torch.set_num_threads(1)`):
  raw vector env     `gymnasium.vector.SyncVectorEnv` of `--concurrency` CartPoles stepped with
                     random actions, nothing else: the rate no run over these envs can beat
  society, random    the cloned CCV society with random bidders, the on-disk ledger on (the
                     engine's own cost over the env's)
  society, learning  the same society of PPO primitives learning (`--learn`, GYM_PPO)
  monolithic PPO     one PPO policy over the two actions (`--learn --monolithic`)
Runs go through `market simulate`'s own path (`simulation.runner.prepare`/`execute`), the
closing audit off (it is `market audit`'s benchmark, benchmarks/scale.py).

    python benchmarks/gymnasium.py [--steps 100000] [--concurrency 128] [--repeats 3]

The rows are interleaved `--repeats` times and given as medians (a run varies with the
machine's load). Saves the measurements under docs/results/data/gymnasium-throughput/ and
writes the table from them (docs/results.md). When learning, most of the time is the PPO
update (docs/gymnasium.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium
sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))

import argparse
import tempfile
import time
from typing import Any

import numpy as np
import polars as pl
import torch
from generated import RESULTS, Table, frame, publish, read, save_data

from simulation.config import Simulation
from simulation.runner import prepare

ENV = "CartPole-v1"


def raw(steps: int, concurrency: int) -> float:
    """Env steps/s of a synchronous vector env under random actions."""
    import gymnasium
    from gymnasium.vector import SyncVectorEnv

    envs = SyncVectorEnv([lambda: gymnasium.make(ENV)] * concurrency)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // concurrency):
        envs.step(rng.integers(0, 2, size=concurrency))
    seconds = time.perf_counter() - start
    envs.close()
    return (steps // concurrency) * concurrency / seconds


def run(steps: int, concurrency: int, **settings: Any) -> float:
    """Env steps/s of `market simulate --task gym:CartPole-v1 ...settings` (no closing audit)."""
    sim = Simulation.model_validate(
        {"task": f"gym:{ENV}", "steps": steps, "concurrency": concurrency, **settings}
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(sim, Path(tmp) / "run")
        start = time.perf_counter()
        finished = prepared.execute(audit=False)
        seconds = time.perf_counter() - start
    return finished.summary.steps / seconds


RUNS = {
    "raw": "raw vector env, random actions",
    "random": "society, random bidders",
    "learning": "society, learning (PPO primitives)",
    "monolithic": "monolithic PPO",
}
TARGET = 20_000
"""Env steps/s of the learning society on one core."""
CEILING_SHARE = 1 / 3
"""The least share of the raw vector env's rate a society without learning keeps (within 3x)."""


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def tables(data: Path) -> list[Table]:
    """Each run's median env steps/s, against the raw vector env's and the two targets
    (learning at `TARGET`; without learning within 3x of the raw rate); from the saved
    measurements."""
    med = read(data, "rates").group_by("run", maintain_order=True).agg(pl.col("per_s").median())
    rate = dict(med.iter_rows())
    asked = {"learning": f">= {TARGET:,} env steps/s", "random": "within 3x of the raw rate"}
    bound = {"learning": TARGET, "random": CEILING_SHARE * rate["raw"]}
    targets = {r: f"{asked[r]}: {_verdict(rate[r] >= bound[r])}" for r in asked if r in rate}
    rows = [
        {
            "run": RUNS[run],
            "env steps/s": f"{per_s:,.0f}",
            "of the raw rate": f"{per_s / rate['raw']:.2f}",
            "target": targets.get(run, ""),
        }
        for run, per_s in rate.items()
    ]
    return [Table(data.name, frame(rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument("--name", default="gymnasium-throughput", help="the saved data's directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings: dict[str, dict[str, Any]] = {
        "random": {"bidder": "random"},
        "learning": {"learn": True},
        "monolithic": {"learn": True, "monolithic": True},
    }
    rows = []
    for k in range(args.repeats):  # interleaved, so machine noise hits every run alike
        rows.append({"run": "raw", "repeat": k, "per_s": raw(args.steps, args.concurrency)})
        for run_name, given in settings.items():
            rows.append(
                {"run": run_name, "repeat": k, "per_s": run(args.steps, args.concurrency, **given)}
            )
    data = save_data(args.results, args.name, "gymnasium-throughput", {"rates": pl.DataFrame(rows)})
    publish(data, args.results)


if __name__ == "__main__":
    main()
