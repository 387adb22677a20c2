"""PPO primitives in the market: data from the ledger, learning (each learning test fails when
the update is removed), updates and audits on every task and mechanism, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from agents.learning import LearningSociety, run_learning
from agents.ppo_bidder import PPOBidders
from agents.settings import PPOConfig
from ledger.store import MemoryLedger
from ledger.units import UNIT
from ledger.utilities import utilities
from market.audit import audit
from market.run import RunConfig
from market.tasks import Task, make_task

FAST = PPOConfig(batch=256, minibatch=64, policy_lr=3e-3)
"""A small batch and a larger step size, so that tests learn in seconds."""


def learn(
    task: str,
    mechanism: str,
    steps: int,
    ppo: PPOConfig = FAST,
    seed: int = 0,
    cloned: bool = True,
) -> tuple[MemoryLedger, LearningSociety]:
    """A learning run of `steps` auctions into a memory ledger."""
    config = RunConfig(
        task=task,
        mechanism=mechanism,
        bidder="ppo",
        cloned=cloned,
        episodes=None,
        steps=steps,
        seed=seed,
        concurrency=16,
        learner=ppo.model_dump(),
    )
    ledger = MemoryLedger()
    _, learner = run_learning(config, ledger, keep_samples=True)
    return ledger, learner


def test_the_utility_a_learner_trains_on_is_the_stored_ledgers() -> None:
    """Every sample a primitive learns from equals the utility recomputed from stored events."""
    ledger, learner = learn("chain", "ccv", steps=3000)
    stored = utilities(ledger.events(), FAST.gamma)
    assert learner.received and learner.updates
    for s in learner.received:
        assert s.utility == stored[(s.episode, s.step, s.account)]
    bids = ledger.scan().collect().filter(kind="bid")
    assert len(learner.received) == bids.height


def greedy(learner: LearningSociety, task: Task) -> str:
    """The greedy society's choice in every state, as experiments/tabular.py reports it: the
    primitive with the highest mean bid (named by its last letter)."""
    means = learner.agent.mean_bids(np.arange(task.n_states))
    return "".join(task.primitive_names[p][-1] for p in means.argmax(axis=0))


def recent_return(ledger: MemoryLedger, episodes: int = 100) -> float:
    """The mean return (credit) of the last `episodes` finished episodes."""
    ends = ledger.scan().filter(pl.col("kind") == "episode_end").collect()
    return float(ends["episode_return"].tail(episodes).mean()) / UNIT  # type: ignore[arg-type]


def test_a_cloned_vickrey_bandit_society_learns_to_rank_arm_3_first() -> None:
    """Bandit, cloned Vickrey: after learning, arm 3 (pays 0.8) wins >= 90% of auctions, its
    mean bid is near its value, and its policy's mean bid tops every other arm's by 0.3.
    Learned (seed 0): 99% of wins, 0.77 against at most 0.27. Without updates every arm bids
    Beta(1, 1): arm 3 wins 25%, and every mean bid is 0.5."""
    ledger, learner = learn("bandit", "v", steps=20_000)
    winners = ledger.scan().collect().filter(kind="allocate")["primitive"].tail(2000).to_numpy()
    assert float((winners == 3).mean()) >= 0.9
    assert abs(learner.mean_bids()[3] - 0.8) < 0.1
    means = learner.agent.mean_bids(np.zeros(1, dtype=np.int64))[:, 0]
    assert means.argmax() == 3 and means[3] - np.delete(means, 3).max() >= 0.3


def test_a_cloned_ccv_society_learns_chain_greedy_rrrrrr() -> None:
    """Chain, cloned CCV: after 10,000 auctions the greedy society goes right in every state
    (R's mean bid above L's by 0.1 or more in each state it plays) and the last 100 episodes
    return 0.75 or more (the experiment's criterion). Learned (seed 0): RRRRRR, R above L by
    0.18-0.54, a return of 0.8 (every episode reaches the goal). Without updates: LLLLLL (all
    bids Beta(1, 1), ties to L), R above L by 0, a return of 0.30."""
    ledger, learner = learn("chain", "ccv", steps=10_000)
    task = make_task("chain")
    assert greedy(learner, task) == "RRRRRR"
    means = learner.agent.mean_bids(np.arange(task.n_states))
    assert (means[1, :5] - means[0, :5]).min() >= 0.1
    assert recent_return(ledger) >= 0.75


def test_a_solitary_ccv_society_learns_chain_and_audits() -> None:
    """Without clones every primitive has one bidder; it still learns Chain (greedy RRRRRR,
    the last 100 episodes returning 0.75 or more: 0.80 learned, seed 0; 0.38 without
    updates) and leaves a ledger that audits clean."""
    ledger, learner = learn("chain", "ccv", steps=20_000, cloned=False)
    assert greedy(learner, make_task("chain")) == "RRRRRR"
    assert recent_return(ledger) >= 0.75
    assert audit(ledger).ok


@pytest.mark.parametrize("mechanism", ["ccv", "v", "bb", "fp", "env"])
@pytest.mark.parametrize("task", ["bandit", "chain", "duality"])
def test_every_task_and_mechanism_updates_every_primitive_and_audits(
    task: str, mechanism: str
) -> None:
    """A tiny learning budget (too small to learn anything) runs its PPO updates, moves every
    primitive's bid policy off its start (the head's weights start at exactly 0), and
    leaves a clean ledger."""
    ledger, learner = learn(task, mechanism, steps=600, ppo=PPOConfig(batch=128, minibatch=64))
    assert learner.updates and isinstance(learner.agent, PPOBidders)
    head = learner.agent.bank.head_w.detach()
    assert all(bool(head[p].abs().sum() > 0) for p in range(head.shape[0]))
    assert audit(ledger).ok


def test_same_seed_same_ledger_and_weights() -> None:
    """One seed fixes the ledger and the learned weights; another seed changes them."""
    runs = [learn("chain", "ccv", steps=1500, seed=s) for s in (7, 7, 8)]
    frames = [ledger.scan().collect() for ledger, _ in runs]
    weights = [
        torch.cat([p.detach().flatten() for p in lr.agent.bank.parameters()]) for _, lr in runs
    ]
    assert frames[0].equals(frames[1]) and torch.equal(weights[0], weights[1])
    assert not frames[0].equals(frames[2])
    assert not torch.equal(weights[0], weights[2])
    assert torch.isfinite(weights[0]).all()


def test_a_learning_run_flushes_subnormals_while_it_runs_and_only_then(tmp_path: Path) -> None:
    """A learning run's loop flushes subnormal floats to 0 (a critic shrunk to subnormal
    weights by its L2 term otherwise slows every update several times); before and after
    it, the process's arithmetic is IEEE's again."""
    from agents.learning import flushes_subnormals
    from simulation.config import Simulation
    from simulation.runner import prepare

    flushed: list[bool] = []
    run = prepare(
        Simulation.model_validate({"task": "chain", "learn": True, "steps": 50}), tmp_path
    )
    assert not flushes_subnormals()
    run.execute(lambda _: flushed.append(flushes_subnormals()), audit=False)
    assert flushed and all(flushed)
    assert not flushes_subnormals()
