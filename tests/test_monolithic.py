"""The monolithic categorical PPO baseline in the market."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agents.encoders import inputs
from agents.ppo_monolithic import MonolithicPPO, discounted, gae
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


def test_monolithic_ppo_with_gae_solves_chain() -> None:
    """The same, its advantages GAE(0.95) from its value net instead of G - V(s)."""
    config = PPOConfig(batch=512, minibatch=128, policy_lr=3e-3, gae_lambda=0.95)
    ledger, agent = run("chain", 60_000, config)
    assert (agent.greedy()[:5] == 1).all()
    ends = ledger.scan().collect().filter(kind="episode_end")["episode_return"].tail(200)
    assert float(ends.to_numpy().mean()) >= 0.75 * 10**9


@pytest.mark.parametrize("epochs", [1, 3])
def test_an_update_makes_epochs_passes_over_its_batch(epochs: int) -> None:
    """`epochs` passes of batch / minibatch gradient steps each (Adam counts its steps)."""
    _, agent = run("chain", 300, PPOConfig(batch=128, minibatch=32, epochs=epochs))
    steps = {int(s["step"]) for s in agent.policy_opt.state.values()}
    assert steps == {len(agent.updates) * epochs * 128 // 32}


def test_samples_carry_the_log_probability_the_policy_acted_with() -> None:
    """Before any update (a batch larger than the run), each sample's `acted` is the acting
    policy's log-probability of its action: the ratio's denominator is the policy that bid,
    however many updates the sample waits for its episode to end."""
    _, agent = run("chain", 300, PPOConfig(batch=10_000))
    assert not agent.updates and agent._samples
    states = np.array([s.state for s in agent._samples], dtype=np.int64)
    with torch.no_grad():
        logp = torch.log_softmax(agent.policy(inputs(agent.task, states)), -1).numpy()
    actions = [s.action for s in agent._samples]
    assert [s.acted for s in agent._samples] == pytest.approx(
        logp[np.arange(len(actions)), actions].tolist(), abs=1e-6
    )


rewards = st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(rewards, st.floats(0.5, 1.0), st.data())
def test_gae_spans_one_step_td_to_monte_carlo(
    r: list[float], gamma: float, data: st.DataObject
) -> None:
    """GAE(1) + V is the discounted return; GAE(0) is the one-step TD error, the last step
    terminal."""
    values = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=len(r), max_size=len(r))))
    r_ = np.array(r, dtype=np.float64)
    assert np.allclose(gae(r_, values, gamma, 1.0) + values, discounted(r_, gamma))
    following = np.append(values[1:], 0.0)
    assert np.allclose(gae(r_, values, gamma, 0.0), r_ + gamma * following - values)


def test_an_unset_gae_lambda_is_not_recorded() -> None:
    """A run that does not use GAE records its settings as before (the pinned heads)."""
    assert "gae_lambda" not in PPOConfig().model_dump()
    assert PPOConfig(gae_lambda=0.9).model_dump()["gae_lambda"] == 0.9


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
