"""Control-variant throughput: env steps/s with learning on, collection and updates apart.

N stacked double-DQN agents (agents/dqn_control.py) drive the pendulum with the on-disk
ledger on, for a fixed number of env steps (the episodes under way finish, so a few more are
run and counted), `--concurrency` episodes at once, one gradient step per
`--steps-per-update` env steps. Collection (kernel, ledger, bus, the agents' batched
forward pass) is the run's wall time minus the time inside updates. A throwaway update
warms torch up first.

    python benchmarks/control_throughput.py [--steps 100000] [--agents 2,4,8]
        [--methods independent,full] [--concurrency 32] [--steps-per-update 8]
        [--name control-throughput]

Saves the measurements under docs/results/data/<name>/ and writes the table <name> from
them (docs/results.md).
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


def tables(data: Path) -> list[Table]:
    """Per N and method: env steps/s of the run, of collection, and the update's cost; from
    the saved measurements. The table is named after the data's directory."""
    rows = [
        {
            "agents": str(m["agents"]),
            "method": m["method"],
            "env steps per gradient step": str(m["steps_per_update"]),
            "env steps/s": f"{m['steps'] / m['total']:,.0f}",
            "collection steps/s": f"{m['steps'] / m['collect']:,.0f}",
            "ms per gradient step": f"{1e3 * m['update'] / max(m['updates'], 1):.2f}",
            "updates": f"{m['updates']:,.0f}",
            "share in updates": f"{m['update'] / m['total']:.0%}",
            "ledger events/s": f"{m['events'] / m['total']:,.0f}",
            f"target (N = 4, full: {TARGET:,} env steps/s)": (
                ("met" if m["steps"] / m["total"] >= TARGET else "not met")
                if (m["agents"], m["method"]) == (4, "full")
                else ""
            ),
        }
        for m in read(data, "runs").iter_rows(named=True)
    ]
    return [Table(data.name, frame(rows))]


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
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    parser.add_argument(
        "--name", default="control-throughput", help="the saved data's directory (and table)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up()
    rows = [
        {
            "agents": agents,
            "method": method,
            "steps_per_update": args.steps_per_update,
            "concurrency": args.concurrency,
            **measure(agents, method, args.steps, args.concurrency, args.steps_per_update),
        }
        for agents in (int(n) for n in args.agents.split(","))
        for method in args.methods.split(",")
    ]
    data = save_data(args.results, args.name, "control-throughput", {"runs": pl.DataFrame(rows)})
    publish(data, args.results)


if __name__ == "__main__":
    main()
