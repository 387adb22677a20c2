"""Gymnasium throughput: env steps/s of a society on CartPole-v1 against its ceilings.

Four rows, each for `--steps` env steps on one core (`torch.set_num_threads(1)`):
  raw vector env     `gymnasium.vector.SyncVectorEnv` of `--concurrency` CartPoles stepped with
                     random actions, nothing else: the rate no run over these envs can beat
  society, random    the cloned CCV society with random bidders, the on-disk ledger on (the
                     engine's own cost over the env's)
  society, learning  the same society of PPO primitives learning (`--learn`, GYM_PPO)
  monolithic PPO     one PPO policy over the two actions (`--learn --monolithic`)
Runs go through `market simulate`'s own path (`agents.runner.prepare`/`execute`), the
closing audit off (it is `market audit`'s benchmark, benchmarks/scale.py).

    python benchmarks/gymnasium.py [--steps 100000] [--concurrency 128]

Measured 2026-12-04, `--steps 30000`, on 2 cores shared with other work (AMD EPYC; a run
varies by up to 40% with the machine's load), medians of 3 to 6 runs at low load: raw vector env
125,000 env steps/s, society with random bidders 41,000, society learning 8,200 (4,300
before its primitives' nets were stacked), monolithic PPO 18,000. Learning, 70% of the time
is the PPO update: per 1,024 samples of each of the 2 primitives, 16 minibatch steps of
about 2 ms (backward pass 40%, forward pass and losses 37%, Adam and the clip 20%).
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agents.runner import prepare
from agents.simulation import Simulation

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [
        ("raw vector env, random actions", raw(args.steps, args.concurrency)),
        ("society, random bidders", run(args.steps, args.concurrency, bidder="random")),
        ("society, learning (PPO primitives)", run(args.steps, args.concurrency, learn=True)),
        ("monolithic PPO", run(args.steps, args.concurrency, learn=True, monolithic=True)),
    ]
    table = Table(title=f"{ENV}: env steps/s, {args.steps:,} steps, {args.concurrency} at once")
    table.add_column("run")
    table.add_column("env steps/s", justify="right")
    table.add_column("of the raw rate", justify="right")
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", f"{rate / rows[0][1]:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
