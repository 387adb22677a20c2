"""The monolithic categorical PPO baseline in the market."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.ppo_monolithic import MonolithicPPO
from agents.settings import PPOConfig
from cli import app
from ledger.store import MemoryLedger
from market.audit import audit
from market.bus import Bus
from market.run import RunConfig, simulate
from market.tasks import make_task


def run(task_name: str, steps: int, config: PPOConfig) -> tuple[MemoryLedger, MonolithicPPO]:
    task = make_task(task_name)
    agent = MonolithicPPO(task, config, seed=0)
    ledger = MemoryLedger()
    bus = Bus(ledger)
    agent.attach(bus)
    run_config = RunConfig(
        task=task_name,
        mechanism="env",
        bidder="monolithic",
        cloned=False,
        episodes=None,
        steps=steps,
        concurrency=16,
        learner=config.model_dump(),
    )
    simulate(run_config, ledger, agent, bus=bus)
    return ledger, agent


def test_its_bids_are_its_actions_and_the_books_hold() -> None:
    """One-hot bids: the allocation is the sampled action; only rewards move money."""
    ledger, agent = run("chain", 400, PPOConfig(batch=128, minibatch=64))
    frame = ledger.scan().collect()
    assert audit(ledger).ok
    assert frame.filter(kind="pay").is_empty() and frame.filter(kind="mint").is_empty()
    won = frame.filter(kind="allocate")["amount"].unique().to_list()
    assert won == [10**9]
    assert agent.updates


def test_monolithic_ppo_solves_chain() -> None:
    """Chain: with a larger step size it goes right in every state and earns the 0.8."""
    ledger, agent = run("chain", 60_000, PPOConfig(batch=512, minibatch=128, policy_lr=3e-3))
    assert (agent.greedy()[:5] == 1).all()
    ends = ledger.scan().collect().filter(kind="episode_end")["episode_return"].tail(200)
    assert float(ends.to_numpy().mean()) >= 0.75 * 10**9


def test_the_cli_runs_the_baseline_under_env_with_a_solitary_society(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--learn --monolithic` records bidder monolithic, mechanism env, no clones; it audits."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        ["simulate", "--task", "chain", "--learn", "--monolithic", "--steps", "2000", "--out", "m"],
    )
    assert result.exit_code == 0 and "AUDIT CLEAN" in result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["bidder"], config["mechanism"], config["cloned"]) == ("monolithic", "env", False)
