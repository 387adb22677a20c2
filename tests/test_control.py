"""The control variant on the kernel, bus and ledger: layout, access, dynamics, audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from agents.fixed_control import RandomPolicy, ZeroPolicy
from agents.settings import METHODS as DQN_METHODS
from cli import app
from ledger.events import ENVIRONMENT, SYSTEM, EventBase, Order, Reward, Transition
from ledger.store import MemoryLedger
from market.audit import audit
from market.bus import Bus
from market.control import METHODS, ControlRunConfig, simulate_control
from market.control_tasks import make_control_task


def run(config: ControlRunConfig, bus_for: MemoryLedger | None = None) -> MemoryLedger:
    """`config` with uniformly random controls (seeded) into a memory ledger."""
    ledger = bus_for if bus_for is not None else MemoryLedger()
    task = make_control_task(config.task, config.agents)
    policy = RandomPolicy(len(task.controls), config.agents, np.random.default_rng(config.seed))
    simulate_control(config, ledger, policy)
    return ledger


CONFIG = ControlRunConfig(task="pendulum", agents=3, policy="random", episodes=4, concurrency=2)


def test_every_step_is_orders_a_transition_and_rewards() -> None:
    """One transaction per step: N orders, the transition, N rewards (plus start and end)."""
    frame = run(CONFIG).scan().collect()
    steps = frame.filter(pl.col("kind") == "transition").height
    horizon = make_control_task("pendulum", 3).horizon
    assert steps == 4 * horizon
    assert frame.filter(pl.col("kind") == "order").height == 3 * steps
    assert frame.filter(pl.col("kind") == "reward").height == 3 * steps
    per_tx = frame.filter(pl.col("kind") == "transition").group_by("tx").len()
    assert per_tx["len"].max() == 1


def test_transitions_follow_the_dynamics_and_rewards_the_rewards() -> None:
    """Stored next states are f(x, u) and stored rewards are g(x, u), quantised to units."""
    frame = run(CONFIG).scan().collect()
    task = make_control_task("pendulum", 3)
    moves = frame.filter(pl.col("kind") == "transition").sort("seq")
    x = np.array(moves["x"].to_list())
    u = np.array(moves["controls"].to_list())
    assert np.array_equal(np.array(moves["next_x"].to_list()), task.f(x, u))
    rewards = frame.filter(pl.col("kind") == "reward").sort("seq")
    sign = np.where(rewards["src"].to_numpy() == ENVIRONMENT, 1, -1)
    units = (sign * rewards["amount"].to_numpy()).reshape(-1, 3)
    assert np.array_equal(units, np.rint(task.g(x, u) * 1e9).astype(np.int64))


def test_runs_audit_clean_and_conserve_credit() -> None:
    """A control run's ledger passes every audit rule; the books sum to zero."""
    ledger = run(CONFIG)
    report = audit(ledger)
    assert report.ok, report.violation
    assert report.closed


def test_same_seed_same_ledger() -> None:
    """One seed fixes every initial state and every control: the same ledger."""
    a, b = run(CONFIG).scan().collect(), run(CONFIG).scan().collect()
    c = run(CONFIG.model_copy(update={"seed": 1})).scan().collect()
    assert a.equals(b)
    assert not a.equals(c)


def test_an_agent_sees_only_its_own_orders_and_rewards_and_the_public_state() -> None:
    """Through the bus an agent gets its orders, its rewards and the system's transitions,
    never another agent's reward or current control."""
    ledger = MemoryLedger()
    bus = Bus(ledger)
    seen: dict[str, list[EventBase]] = {"agent0": [], SYSTEM: []}
    for account, got in seen.items():
        bus.subscribe(account, got.append)
    task = make_control_task("integrator", 3)
    policy = RandomPolicy(len(task.controls), 3, np.random.default_rng(0))
    config = ControlRunConfig(task="integrator", agents=3, policy="random", episodes=2)
    simulate_control(config, ledger, policy, bus=bus)
    mine = [e for e in seen["agent0"] if isinstance(e, Order | Reward)]
    assert mine
    for e in mine:
        if isinstance(e, Order):
            assert e.account == "agent0"
        else:
            assert "agent0" in (e.src, e.dst)
    assert not any(isinstance(e, Transition) for e in seen["agent0"])
    assert {e.kind for e in seen[SYSTEM]} == {"open", "transition", "balance"}  # type: ignore[attr-defined]
    others = {f"agent{i}" for i in (1, 2)}
    addressed = {getattr(e, k, None) for e in seen["agent0"] for k in ("account", "src", "dst")}
    assert not addressed & others
    orders = [e for e in seen["agent0"] if isinstance(e, Order)]
    transitions = [e for e in seen[SYSTEM] if isinstance(e, Transition)]
    assert len(orders) == len(transitions) == 2 * task.horizon


def test_zero_controls_apply_no_torque() -> None:
    """The zero policy orders control 0.0 for every agent at every step."""
    task = make_control_task("integrator", 2)
    config = ControlRunConfig(task="integrator", agents=2, policy="zero", episodes=1)
    ledger = MemoryLedger()
    simulate_control(config, ledger, ZeroPolicy(task.controls, 2))
    controls = ledger.scan().filter(pl.col("kind") == "order").collect()["control"]
    assert controls.len() == 2 * task.horizon and (controls == 0.0).all()


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("task", "nope", "unknown control task"),
        ("policy", "nope", "unknown control policy"),
        ("method", "nope", "names a method"),
        ("agents", 0, "greater than or equal to 1"),
        ("controls", 9, "for Gymnasium plants"),
    ],
)
def test_bad_control_configs_are_refused(field: str, value: object, needle: str) -> None:
    """A control config with a bad field is a validation error naming the problem."""
    with pytest.raises(ValueError, match=needle):
        ControlRunConfig.model_validate({"policy": "zero", field: value})


def test_resuming_a_control_run_is_a_one_line_refusal(tmp_path: Path) -> None:
    """`--resume` on a control run says it cannot be done, in one line, and changes nothing."""
    run_dir = tmp_path / "ctl"
    made = CliRunner().invoke(
        app, ["simulate", "--variant", "control", "--bidder", "zero", "--episodes", "1",
              "--task", "integrator", "--out", str(run_dir)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    before = sorted(p.name for p in (run_dir / "ledger").iterdir())
    result = CliRunner().invoke(app, ["simulate", "--resume", str(run_dir), "--steps", "10"])
    assert result.exit_code != 0
    assert "cannot be resumed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (run_dir / "ledger").iterdir()) == before


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_from_the_cli_and_its_ledger_audits(tmp_path: Path, method: str) -> None:
    """`market simulate --variant control --method M` learns for a tiny budget, records the
    learner's settings, and leaves a ledger that `market audit` finds clean."""
    run_dir = tmp_path / method
    made = CliRunner().invoke(
        app, ["simulate", "--variant", "control", "--task", "integrator", "--agents", "3",
              "--method", method, "--steps", "300", "--concurrency", "3", "--seed", "1",
              "--out", str(run_dir)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["audit"] == "clean" and summary["episodes"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == method and config["learner"]["steps_per_update"] == 8
    switches = {k for k in ("ter", "ier", "iql", "psi") if config["learner"][k]}
    assert switches == set(DQN_METHODS[method])
    audited = CliRunner().invoke(app, ["audit", str(run_dir)])
    assert audited.exit_code == 0, audited.output
