"""Control-variant throughput: env steps/s with learning on, collection and updates apart.

N stacked double-DQN agents (agents/dqn_control.py) drive the pendulum with the on-disk
ledger on, for a fixed number of env steps (the episodes under way finish, so a few more are
run and counted), `--concurrency` episodes at once, one gradient step per
`--steps-per-update` env steps. Collection (kernel, ledger, bus, the agents' batched
forward pass) is the run's wall time minus the time inside updates. A throwaway update
warms torch up first.

    python benchmarks/control_throughput.py [--steps 100000] [--agents 2,4,8]
        [--methods independent,full] [--concurrency 32] [--steps-per-update 8]

Measured with `--steps 50000 --agents 4 --methods full,independent`, back to back three
times on a shared 2-core machine (docs/control.md, "Speed"): before the hand-written
gradient and the per-instant preparation, full 1,635 / 2,353 / 1,519 env steps/s; after,
2,897 / 3,692 / 2,245. The update alone: 3.5-3.7 ms of CPU per gradient step before, 1.4-1.8
after. Collection alone runs at 11,000-23,000, so the target (10,000) is not reached.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agents.control_learning import ControlSociety
from agents.dqn_control import ControlDQN
from agents.learning import learner_seed
from agents.settings import ControlDQNConfig
from ledger.disk import DiskLedger
from market.bus import Bus
from market.control import LEARNING_CONCURRENCY, ControlRunConfig, simulate_control
from market.control_tasks import make_control_task

TARGET = 10_000
"""The target: env steps/s at N = 4 with `full` on one core with the ledger on, learning at
the default training rate."""


def measure(
    agents: int, method: str, steps: int, concurrency: int, steps_per_update: int
) -> dict[str, float]:
    """Wall seconds of a learning run, split into collection and update."""
    config = ControlRunConfig(
        agents=agents,
        policy="dqn",
        method=method,
        episodes=None,
        steps=steps,
        concurrency=concurrency,
    )
    task = make_control_task(config.task, agents)
    dqn = ControlDQNConfig.for_method(method, steps_per_update=steps_per_update)
    society = ControlSociety(task, config.accounts, dqn, learner_seed(0), steps)
    spent = {"update": 0.0}
    update = society.agent.update

    def timed_update(times: int = 1) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return update(times)
        finally:
            spent["update"] += time.perf_counter() - start

    society.agent.update = timed_update  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = DiskLedger(Path(tmp) / "ledger")
        bus = Bus(ledger)
        society.attach(bus)
        start = time.perf_counter()
        summary = simulate_control(config, ledger, society, bus=bus)
        total = time.perf_counter() - start
    return {
        "steps": float(society.agent.env_steps),
        "total": total,
        "update": spent["update"],
        "collect": total - spent["update"],
        "updates": float(society.agent.updates),
        "events": float(summary.events),
    }


def warm_up() -> None:
    """A few updates of a throwaway learner, so torch's lazy set-up happens off the clock."""
    task = make_control_task("pendulum", 2)
    agent = ControlDQN(task, ControlDQNConfig.for_method("full"), features=task.features)
    rng = np.random.default_rng(0)
    x = task.reset(rng, 64)
    actions = rng.integers(0, len(task.controls), (64, 2))
    u = task.controls[actions]
    agent.observe(x, np.zeros((64, 2)), actions, task.g(x, u), task.f(x, u))
    agent.update(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--agents", default="2,4,8")
    parser.add_argument("--methods", default="independent,full")
    parser.add_argument("--concurrency", type=int, default=LEARNING_CONCURRENCY)
    parser.add_argument(
        "--steps-per-update",
        type=int,
        default=ControlDQNConfig.model_fields["steps_per_update"].default,
        help="env steps per gradient step",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up()
    table = Table(
        title=f"control learning throughput, pendulum, {args.steps:,} env steps, "
        f"{args.concurrency} episodes at once, a gradient step per {args.steps_per_update} "
        f"env steps, one core (target at N = 4: "
        f"{TARGET:,} env steps/s)"
    )
    for col in (
        "agents",
        "method",
        "env steps/s",
        "collection steps/s",
        "ms per gradient step",
        "updates",
        "share in updates",
        "ledger events/s",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for agents in (int(n) for n in args.agents.split(",")):
        for method in args.methods.split(","):
            m = measure(agents, method, args.steps, args.concurrency, args.steps_per_update)
            table.add_row(
                str(agents),
                method,
                f"{m['steps'] / m['total']:,.0f}",
                f"{m['steps'] / m['collect']:,.0f}",
                f"{1e3 * m['update'] / max(m['updates'], 1):.2f}",
                f"{m['updates']:,.0f}",
                f"{m['update'] / m['total']:.0%}",
                f"{m['events'] / m['total']:,.0f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
