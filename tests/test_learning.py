"""PPO primitives in the market: data from the ledger, learning, smoke runs, determinism."""

from __future__ import annotations

import pytest
import torch

from agents.learning import LearningSociety, run_learning
from agents.settings import PPOConfig
from ledger.store import MemoryLedger
from ledger.utilities import utilities
from market.audit import audit
from market.run import RunConfig

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


def test_cloned_vickrey_bandit_learns_to_let_the_best_arm_win() -> None:
    """Bandit, cloned Vickrey: after learning, arm 3 (pays 0.8) wins >= 90% of auctions."""
    ledger, learner = learn("bandit", "v", steps=20_000)
    winners = ledger.scan().collect().filter(kind="allocate")["primitive"].tail(2000).to_numpy()
    assert float((winners == 3).mean()) >= 0.9
    assert abs(learner.mean_bids()[3] - 0.8) < 0.1


@pytest.mark.parametrize("mechanism", ["ccv", "v", "bb", "fp", "env"])
@pytest.mark.parametrize("task", ["bandit", "chain", "duality"])
def test_every_task_and_mechanism_learns_end_to_end_and_audits(task: str, mechanism: str) -> None:
    """A tiny learning budget runs, updates every primitive, and leaves a clean ledger."""
    ledger, learner = learn(task, mechanism, steps=600, ppo=PPOConfig(batch=128, minibatch=64))
    assert learner.updates
    assert audit(ledger).ok


def test_solitary_society_learns_end_to_end() -> None:
    """Without clones every primitive has one bidder and still learns and audits."""
    ledger, learner = learn("chain", "ccv", steps=600, ppo=PPOConfig(batch=128), cloned=False)
    assert learner.updates and audit(ledger).ok


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
