"""The cooperative-control comparison: independent DQN against TER, IER, IQL, full.

Every run is a control-variant learning run (`market/control.py`, `agents/dqn_control.py`)
with its ledger on disk, for a fixed budget of env steps. Every figure is folded from the
stored ledger, not from the learners:
- final return per agent: each agent's episode return (the sum of its Reward events),
  averaged over the last 10% of episodes, then over agents;
- held: the share of those episodes in the goal band for the whole last quarter of the
  episode (the band at the end, not one pass through it);
- steps to reach / to hold: the env steps before the first step in the band, and before
  the end of the first episode that holds it;
- psi = +1: the share of steps and agents with sgn(u_i * sum_{j != i} u_j) >= 0 (methods.md),
  from the joint controls of the Transition events;
- greedy: after training, the agents' greedy policy (no exploration, no learning) runs 32
  episodes of its own, on pendulum-hanging for the pendulum (the swing-up every time), into
  its own audited ledger: its return per agent, the share of episodes it holds, and how
  far from the goal its episodes end (the mean of `ControlTask.goal_error` at the last step:
  a policy that stops just outside the band holds nothing and earns nearly the best return).
Training episodes explore (epsilon-greedy), and the pendulum's start anywhere, so the greedy
figures are the ones that say what was learned.
On a Gymnasium plant (`--task gym:Pendulum-v1`) the reference is learned, not designed:
`--methods ...,joint` adds one DQN agent choosing the N agents' joint action (every sum of
their controls is one of its controls), its returns divided by N.
Saves runs.parquet, curves.parquet and reference.parquet (the central controller) under
<results>/data/<name>/, then writes the tables and PNG
learning curves they make under <results>/ (experiments/regenerate.py remakes them). Each
figure is the mean over seeds with its 95% confidence interval, bootstrapped over seeds.

    python experiments/control.py --seeds 5 [--agents 2,4] [--steps 200000] [--workers 2]
                                  [--keep DIR]
`--keep DIR` keeps each finished run's figures in DIR, so a long study stopped part-way is
finished by running the same command again (experiments/pool.py).
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import torch
from generated import RESULTS, Table, frame, interval, publish, read, save_data
from numpy.typing import NDArray
from pool import run_all

from agents.control_learning import ControlSociety
from agents.dqn_control import coordination
from agents.fixed_control import PushAndCoast
from agents.learning import learner_seed
from agents.settings import METHODS, ControlDQNConfig
from ledger.disk import DiskLedger
from ledger.events import ENVIRONMENT
from ledger.store import MemoryLedger
from ledger.units import UNIT
from market.audit import audit
from market.bus import Bus
from market.control import (
    LEARNING_CONCURRENCY,
    ControlPolicy,
    ControlRunConfig,
    control_task_of,
    simulate_control,
)
from market.control_tasks import ControlTask, Pendulum, Stiction, make_control_task, wrap
from market.gym_control import N_CONTROLS
from market.tasks import gym_id

FINAL_SHARE = 0.1
"""The share of a run's last episodes that the final figures average."""


def run_one(
    task_name: str,
    agents: int,
    method: str,
    seed: int,
    steps: int,
    concurrency: int,
    learner: dict[str, float] | None = None,
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """One learning run: its summary row and its learning curve. Method `joint` is the
    reference for a Gymnasium plant: one DQN agent choosing the N agents' joint action
    (`joint_controls`), its returns divided by N (the share each of N agents earns)."""
    torch.set_num_threads(1)
    overrides = dict(learner or {})
    gamma = float(overrides.pop("gamma", ControlRunConfig.model_fields["gamma"].default))
    joint = method == JOINT
    config = ControlRunConfig(
        task=task_name,
        agents=1 if joint else agents,
        policy="dqn",
        method="independent" if joint else method,
        episodes=None,
        steps=steps,
        seed=seed,
        concurrency=concurrency,
        gamma=gamma,
        controls=joint_controls(agents) if joint else None,
    )
    task = control_task_of(config)
    dqn = ControlDQNConfig.for_method(str(config.method), gamma=gamma, **overrides)
    society = ControlSociety(task, config.accounts, dqn, learner_seed(seed), steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = DiskLedger(Path(tmp) / "ledger")
        bus = Bus(ledger)
        society.attach(bus)
        summary = simulate_control(config, ledger, society, bus=bus)
        seconds = time.perf_counter() - start
        clean = audit(ledger).ok
        episodes = episode_table(ledger.scan(), task)
    row, curve = summarise(episodes, task)
    row |= evaluate(society, config)
    if joint:
        share = 1 / agents
        for key in ("final_return_per_agent", "greedy_return_per_agent"):
            row[key] = float(row[key]) * share  # type: ignore[arg-type]
        curve = [p | {"return_per_agent": float(p["return_per_agent"]) * share} for p in curve]  # type: ignore[arg-type]
    row |= {
        "task": task_name,
        "agents": agents,
        "method": method,
        "seed": seed,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "events": summary.events,
        "audit_clean": clean,
        "episodes_in_order": True,
    }
    return row, [{**p, "agents": agents, "method": method, "seed": seed} for p in curve]


BANDED = frozenset({"greedy_held_share", "greedy_end_error", "held_share", "steps_to_hold"})
"""The columns that read the goal band: none on a Gymnasium plant, which has none."""

ORDERED = frozenset({"final_return_per_agent", "held_share"})
"""The columns that read the training episodes in the order they ended (the last tenth):
shown only for runs that record `episodes_in_order`. Runs saved before it joined their
returns in no particular order, so these figures, and their curves, are not the last tenth
of training or its blocks, and are left out."""


JOINT = "joint"
"""The reference arm on a Gymnasium plant: one DQN over the N agents' joint action."""


def joint_controls(agents: int) -> int:
    """The controls of one agent that can push as N agents together can: every sum of N
    agents' controls (each N_CONTROLS, evenly spread) is one of them."""
    return (N_CONTROLS - 1) * agents + 1


EVALUATION_EPISODES = 32
EVALUATED_ON = {"pendulum": "pendulum-hanging"}
"""The task a trained society's greedy policy is evaluated on (the swing-up for the pendulum)."""


def evaluate(society: ControlSociety, trained: ControlRunConfig) -> dict[str, object]:
    """The greedy policy's return per agent and held share, over EVALUATION_EPISODES episodes
    from their own seeded starts, folded from the evaluation run's own (audited) ledger."""
    task_name = EVALUATED_ON.get(trained.task, trained.task)
    config = trained.model_copy(
        update={
            "task": task_name,
            "episodes": EVALUATION_EPISODES,
            "steps": None,
            "concurrency": EVALUATION_EPISODES,
            "seed": trained.seed + 1_000_000,
        }
    )
    ledger = MemoryLedger()
    simulate_control(config, ledger, society.greedy())
    episodes = episode_table(ledger.scan(), control_task_of(config))
    return {
        "greedy_return_per_agent": float(episodes["return_per_agent"].mean()),  # type: ignore[arg-type]
        "greedy_held_share": float(episodes["held"].mean()),  # type: ignore[arg-type]
        "greedy_end_error": float(episodes["end_error"].mean()),  # type: ignore[arg-type]
        "greedy_audit_clean": audit(ledger).ok,
    }


class Reference:
    """A central controller that sees everything, for scale: pump energy toward that of
    resting at theta*, then hold with a PD law; the wanted total torque is split over the
    agents as evenly as the control set allows (pendulum only)."""

    def __init__(self, task: Pendulum) -> None:
        self.task = task

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        """Every agent's control index for states x (B, 2)."""
        task, n = self.task, self.task.n_agents
        theta, omega = x[:, 0], x[:, 1]
        error = wrap(theta - task.theta_star)
        energy = 0.5 * omega**2 + task.gravity * np.cos(theta)
        pump = np.sign(omega + 1e-12) * (task.gravity * np.cos(task.theta_star) - energy) * 5
        near = (np.abs(error) < 0.3) & (np.abs(omega) < 2)
        wanted = np.where(near, -task.holding_torque - 20 * error - 4 * omega, pump)
        step = task.controls[1] - task.controls[0]
        levels = len(task.controls) - 1
        total = np.clip(np.rint((wanted + n * task.u_max) / step), 0, n * levels).astype(int)
        base, extra = np.divmod(total, n)
        out: NDArray[np.int64] = base[:, None] + (np.arange(n)[None, :] < extra[:, None])
        return out


CENTRAL: dict[str, Callable[[ControlTask], ControlPolicy]] = {
    "pendulum": lambda task: Reference(cast(Pendulum, task)),
    "stiction": lambda task: PushAndCoast(cast(Stiction, task)),
    "stiction-l1": lambda task: PushAndCoast(cast(Stiction, task)),
}
"""The designed central controller of each task that has one, for scale."""


def reference(task_name: str, agents: int) -> dict[str, object]:
    """The task's central controller's greedy figures on the task its learners are evaluated
    on (as `evaluate`)."""
    evaluated = EVALUATED_ON.get(task_name, task_name)
    task = make_control_task(evaluated, agents)
    config = ControlRunConfig(task=evaluated, agents=agents, policy="zero",
                              episodes=EVALUATION_EPISODES, concurrency=EVALUATION_EPISODES,
                              seed=1_000_000)  # fmt: skip
    ledger = MemoryLedger()
    simulate_control(config, ledger, CENTRAL[task_name](task))
    episodes = episode_table(ledger.scan(), task)
    return {
        "agents": agents,
        "return_per_agent": float(episodes["return_per_agent"].mean()),  # type: ignore[arg-type]
        "held_share": float(episodes["held"].mean()),  # type: ignore[arg-type]
        "end_error": float(episodes["end_error"].mean()),  # type: ignore[arg-type]
        "audit_clean": audit(ledger).ok,
    }


def episode_table(events: pl.LazyFrame, task: ControlTask) -> pl.DataFrame:
    """One row per episode, folded from the ledger: per-agent returns, band, psi."""
    moves = (
        events.filter(pl.col("kind") == "transition")
        .select("seq", "episode", "step", "controls", "next_x")
        .sort("seq")
        .collect()
    )
    next_x = np.array(moves["next_x"].to_list())
    u = np.array(moves["controls"].to_list())
    # psi as the learners compute it: the others' sum over the others only (total - u_i can
    # leave a rounding residue where the others cancel, and flip psi's sign).
    coordinating = (coordination(u) > 0).mean(axis=1)
    steps = moves.with_columns(
        pl.Series("in_band", task.in_goal(next_x)),
        pl.Series("goal_error", task.goal_error(next_x)),
        pl.Series("coordinating", coordinating),
        pl.int_range(1, pl.len() + 1).alias("env_steps"),
    )
    quarter = task.horizon - task.horizon // 4
    per_episode = (
        steps.group_by("episode")
        .agg(
            pl.col("env_steps").max().alias("env_steps"),
            pl.col("in_band").filter(pl.col("step") >= quarter).all().alias("held"),
            pl.col("in_band").any().alias("reached"),
            pl.col("goal_error").sort_by("step").last().alias("end_error"),
            pl.col("env_steps").filter(pl.col("in_band")).min().alias("first_in_band"),
            pl.col("coordinating").mean(),
        )
        .sort("env_steps")
    )
    paid = pl.col("src") == ENVIRONMENT
    signed = pl.when(paid).then(pl.col("amount")).otherwise(-pl.col("amount"))
    agent = pl.when(paid).then(pl.col("dst")).otherwise(pl.col("src"))
    returns = (
        events.filter(pl.col("kind") == "reward")
        .group_by("episode")
        .agg((signed.sum() / UNIT).alias("team_return"), agent.n_unique().alias("n"))
        .collect()
    )
    # (a join keeps no order unless asked: the summary's last tenth and the curve's blocks
    # are episodes in the order they ended)
    table = per_episode.join(
        returns.select("episode", "team_return", "n"), on="episode", maintain_order="left"
    )
    return table.with_columns((pl.col("team_return") / pl.col("n")).alias("return_per_agent"))


def summarise(
    episodes: pl.DataFrame, task: ControlTask
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """A run's figures and its learning curve (mean return per agent per 2% of episodes)."""
    final = episodes.tail(max(int(episodes.height * FINAL_SHARE), 1))
    first_hold = episodes.filter(pl.col("held"))["env_steps"].min()
    first_reach = episodes["first_in_band"].min()
    row: dict[str, object] = {
        "final_return_per_agent": float(final["return_per_agent"].mean()),  # type: ignore[arg-type]
        "held_share": float(final["held"].mean()),  # type: ignore[arg-type]
        "steps_to_reach": first_reach,
        "steps_to_hold": first_hold,
        "psi_plus_share": float(episodes["coordinating"].mean()),  # type: ignore[arg-type]
        "episodes": episodes.height,
    }
    chunk = max(episodes.height // 50, 1)
    curve = (
        episodes.with_row_index("i")
        .group_by(pl.col("i") // chunk, maintain_order=True)
        .agg(pl.col("env_steps").max(), pl.col("return_per_agent").mean(), pl.col("held").mean())
        .drop("i")
        .sort("env_steps")
    )
    return row, curve.to_dicts()


COLUMNS = (
    ("greedy return per agent", "greedy_return_per_agent", "{:,.0f}"),
    ("greedy held", "greedy_held_share", "{:.2f}"),
    ("greedy distance from the goal at the end", "greedy_end_error", "{:.3f}"),
    ("training return per agent (last 10%)", "final_return_per_agent", "{:,.0f}"),
    ("training held", "held_share", "{:.2f}"),
    ("psi = +1", "psi_plus_share", "{:.2f}"),
    ("env steps to first hold", "steps_to_hold", "{:,.0f}"),
    ("env steps/s", "steps_per_s", "{:,.0f}"),
)
"""The table's spread columns: heading, runs.parquet column, format."""


def in_order(runs: pl.DataFrame) -> bool:
    """Whether every run recorded its training episodes in the order they ended (`ORDERED`);
    a study whose kept runs are partly older is not."""
    if "episodes_in_order" not in runs.columns:
        return False
    return bool(runs["episodes_in_order"].fill_null(False).all())


def tables(data: Path) -> list[Table]:
    """Per number of agents and method, over seeds: COLUMNS as mean [95% bootstrap confidence
    interval] (`generated.interval`), the seeds
    whose training ever held the band (none of the band's columns on a Gymnasium plant, which
    has no band), and whether every ledger audited clean; then the
    central controller's greedy figures (saved as reference.parquet) for scale, where there
    is one (`CENTRAL`)."""
    runs = read(data, "runs")
    banded = gym_id(str(runs["task"][0])) is None  # a Gymnasium plant has no goal band
    ordered = in_order(runs)
    columns = [
        c
        for c in COLUMNS
        if c[1] in runs.columns  # (studies saved before a column was added lack it)
        and (ordered or c[1] not in ORDERED)
        and (banded or c[1] not in BANDED)
    ]
    order = {m: i for i, m in enumerate((*METHODS, JOINT))}
    rows = []
    for (n, method), part in runs.sort(
        "agents", pl.col("method").replace_strict(order, return_dtype=pl.Int64), "seed"
    ).group_by("agents", "method", maintain_order=True):
        row = {"N": str(n), "method": str(method), "seeds": str(part.height)}
        row |= {heading: interval(part[col], fmt) for heading, col, fmt in columns}
        if banded:
            row["seeds that ever held"] = str(part["steps_to_hold"].is_not_null().sum())
        clean = part["audit_clean"] & part["greedy_audit_clean"]
        row["audit clean"] = str(bool(clean.all()))
        rows.append(row)
    reference_rows = [
        {
            "N": str(r["agents"]),
            "central controller: greedy return per agent": f"{r['return_per_agent']:,.0f}",
            "central controller: greedy held": f"{r['held_share']:.2f}",
            **(
                {"central controller: distance from the goal at the end": f"{r['end_error']:.3f}"}
                if r.get("end_error") is not None
                else {}
            ),
            "audit clean": str(r["audit_clean"]),
        }
        for r in read(data, "reference").sort("agents").iter_rows(named=True)
    ]
    made = [Table(data.name, frame(rows))]
    if reference_rows:  # a designed controller (CENTRAL); a Gymnasium plant has none
        made.append(Table(f"{data.name}-reference", frame(reference_rows)))
    return made


def plots(data: Path, img: Path) -> None:
    """One PNG per number of agents: each method's return per agent against env steps, the
    median over seeds with the range between the lowest and highest seed shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read(data, "runs")
    if not in_order(runs):
        return  # its curves' blocks are not consecutive episodes (`ORDERED`)
    curves = read(data, "curves")
    task = str(runs["task"][0])
    img.mkdir(parents=True, exist_ok=True)
    for n in curves["agents"].unique().sort():
        part = curves.filter(pl.col("agents") == n)
        fig, ax = plt.subplots(figsize=(7, 4))
        arms = (*METHODS, JOINT)
        for k, method in enumerate(m for m in arms if m in part["method"].to_list()):
            runs = part.filter(pl.col("method") == method)
            per_seed = [
                runs.filter(pl.col("seed") == seed).sort("env_steps")
                for seed in runs["seed"].unique().sort()
            ]
            length = min(r.height for r in per_seed)
            steps = np.median([r["env_steps"].to_numpy()[:length] for r in per_seed], axis=0)
            values = np.array([r["return_per_agent"].to_numpy()[:length] for r in per_seed])
            ax.plot(steps, np.median(values, axis=0), color=f"C{k}", label=method)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=f"C{k}",
                            alpha=0.12)  # fmt: skip
        ax.set_title(f"{task}, N = {n}: training return per agent (median over seeds)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return per agent (credit)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / f"{data.name}-n{n}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--agents", default="2,4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--task", default="pendulum")
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    parser.add_argument(
        "--concurrency", type=int, default=LEARNING_CONCURRENCY, help="episodes at once"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--learner", default="", help="learner settings, e.g. gamma=0.99,epsilon_steps=20000"
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved data, tables and plots go here"
    )
    parser.add_argument("--name", default="control", help="the saved data's directory name")
    parser.add_argument(
        "--keep", type=Path, help="keep each finished run here; run again to finish the rest"
    )
    args = parser.parse_args()
    learner = {k: float(v) for k, v in (kv.split("=") for kv in args.learner.split(",") if kv)}
    learner = {k: int(v) if v.is_integer() and k != "gamma" else v for k, v in learner.items()}
    agents = sorted({int(n) for n in args.agents.split(",")})
    if JOINT in args.methods.split(",") and not args.task.startswith("gym:"):
        parser.error(f"--methods {JOINT} is the reference on a Gymnasium plant (--task gym:ID)")
    jobs = [
        (args.task, n, method, seed, args.steps, args.concurrency, learner)
        for n in agents
        for method in args.methods.split(",")
        if not (method == JOINT and n == 1)  # one agent's joint action is its own
        for seed in range(args.seeds)
    ]
    rows, curves = run_all(run_one, jobs, args.workers, args.keep)
    frames = {
        "runs": pl.DataFrame(rows).sort("agents", "method", "seed"),
        "curves": pl.DataFrame(curves),
        "reference": pl.DataFrame(
            [reference(args.task, n) for n in agents] if args.task in CENTRAL else [],
            schema={
                "agents": pl.Int64,
                "return_per_agent": pl.Float64,
                "held_share": pl.Float64,
                "end_error": pl.Float64,
                "audit_clean": pl.Boolean,
            },
        ),
    }
    publish(save_data(args.results, args.name, "control", frames), args.results)


if __name__ == "__main__":
    main()
