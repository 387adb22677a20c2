"""The live payoff fold equals the stored-ledger fold, sample by sample."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from agents.fixed import RandomBidder
from ledger.payoffs import PayoffTracker, Sample
from ledger.store import MemoryLedger
from ledger.utilities import utilities
from market.bus import Bus
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task


@pytest.mark.parametrize("mechanism", ["ccv", "v", "bb", "fp", "env"])
@pytest.mark.parametrize(("task", "concurrency"), [("chain", 1), ("duality", 4), ("bandit", 3)])
def test_live_samples_equal_the_utilities_of_the_stored_ledger(
    mechanism: str, task: str, concurrency: int
) -> None:
    """Every finished sample's utility is the one `utilities` folds from the stored events."""
    gamma = Fraction(99, 100)
    ledger = MemoryLedger()
    bus = Bus(ledger)
    samples: list[Sample] = []
    bus.subscribe_all(PayoffTracker(gamma, samples.extend).apply)
    society = Society.of(make_task(task))
    policy = RandomBidder(len(society.accounts), np.random.default_rng(1))
    config = RunConfig(
        task=task, mechanism=mechanism, bidder="random", episodes=12, concurrency=concurrency
    )
    simulate(config, ledger, policy, bus=bus)
    stored = utilities(ledger.events(), gamma)
    live = {(s.episode, s.step, s.account): s.utility for s in samples}
    assert live == stored
    bids = {
        (e.episode, e.step, e.account): (e.state, e.amount)
        for e in ledger.events()
        if e.kind == "bid"
    }
    assert {k: (s.state, s.bid) for s in samples for k in [(s.episode, s.step, s.account)]} == bids
