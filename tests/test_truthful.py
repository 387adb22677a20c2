"""Truthful and random fixed bidders on Chain, end to end through the engine and the audit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from agents.fixed import make_bidder
from ledger.events import Allocate, Bid, EpisodeEnd, Mint
from ledger.store import MemoryLedger
from ledger.units import UNIT, to_units
from ledger.utilities import utilities
from market.audit import audit
from market.mechanisms import Mechanism
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import Chain, make_task

GAMMA = 0.99
EPISODES = 30


def run(mechanism: Mechanism, bidder: str, cloned: bool = True, seed: int = 0) -> MemoryLedger:
    """Simulate `EPISODES` Chain episodes with a fixed bidder into a fresh ledger."""
    config = RunConfig(
        task="chain", mechanism=mechanism, bidder=bidder, cloned=cloned, episodes=EPISODES,
        seed=seed, gamma=GAMMA,
    )  # fmt: skip
    task = make_task(config.task)
    policy = make_bidder(bidder, task, Society.of(task, cloned), GAMMA, np.random.default_rng(seed))
    ledger = MemoryLedger()
    simulate(config, ledger, policy)
    return ledger


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_truthful_winners_always_run_r(mechanism: Mechanism) -> None:
    """Truthful clones bid Q*, so every auction on Chain is won by a bidder running R."""
    events = list(run(mechanism, "truthful").events())
    allocations = [e for e in events if isinstance(e, Allocate)]
    assert len(allocations) == 5 * EPISODES
    r = Chain.primitive_names.index("R")
    assert {e.primitive for e in allocations} == {r}


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_truthful_episodes_return_the_goal_reward(mechanism: Mechanism) -> None:
    """Truthful clones walk straight to the goal: every episode takes 5 steps and returns 0.8."""
    ends = [e for e in run(mechanism, "truthful").events() if isinstance(e, EpisodeEnd)]
    assert len(ends) == EPISODES
    assert {(e.steps, e.episode_return) for e in ends} == {(5, to_units(0.8))}


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_truthful_run_audits_clean(mechanism: Mechanism) -> None:
    """A truthful cloned Chain run passes every rule of the audit."""
    report = audit(run(mechanism, "truthful"))
    assert report.violation is None, str(report.violation)
    assert (report.auctions, report.episodes) == (5 * EPISODES, EPISODES)


def test_truthful_bids_are_q_star() -> None:
    """A truthful R bidder in state s bids Q*(s, R) = 0.8 * 0.99^(4 - s) credit."""
    bids = [e for e in run(Mechanism.CCV, "truthful").events() if isinstance(e, Bid)]
    r = Chain.primitive_names.index("R")
    for e in bids:
        if e.primitive == r:
            assert abs(e.amount - 0.8 * GAMMA ** (4 - e.state) * UNIT) <= 1


@pytest.mark.parametrize("mechanism", [Mechanism.CCV, Mechanism.V, Mechanism.BB, Mechanism.FP])
def test_truthful_clones_price_the_winner_at_its_valuation(mechanism: Mechanism) -> None:
    """With truthful clones tied at Q*, the winner pays its value back: U_t = 0 (to rounding)."""
    u = utilities(run(mechanism, "truthful").events(), Fraction(99, 100))
    assert max(abs(v) for v in u.values()) < 1


def test_truthful_clones_mint_nothing_under_vickrey() -> None:
    """Under v, truthful clones tie, so b1 = b2 at every auction and no credit is minted."""
    ledger = run(Mechanism.V, "truthful")
    assert audit(ledger).minted == 0
    assert sum(e.amount for e in ledger.events() if isinstance(e, Mint)) == 0


def _minted_from_bids(ledger: MemoryLedger) -> int:
    """Sum of b1 - b2 over every auction after the first of its episode, from the Bid events."""
    ranked = pl.col("amount").sort(descending=True)
    per_auction = (
        ledger.scan()
        .filter(pl.col("kind") == "bid")
        .group_by("tx")
        .agg(pl.col("step").first(), ranked.get(0).alias("b1"), ranked.get(1).alias("b2"))
        .filter(pl.col("step") >= 1)
        .collect()
    )
    return int((per_auction["b1"] - per_auction["b2"]).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_random_bidders_under_vickrey_mint_b1_minus_b2(seed: int) -> None:
    """Random bidders under v: the audit is clean and its minted total is Sum (b1 - b2)."""
    ledger = run(Mechanism.V, "random", seed=seed)
    report = audit(ledger)
    assert report.violation is None, str(report.violation)
    expected = _minted_from_bids(ledger)
    assert expected > 0
    assert report.minted == expected
    assert sum(e.amount for e in ledger.events() if isinstance(e, Mint)) == expected


@pytest.mark.parametrize("mechanism", [Mechanism.CCV, Mechanism.BB, Mechanism.FP, Mechanism.ENV])
def test_random_bidders_mint_nothing_outside_vickrey(mechanism: Mechanism) -> None:
    """Random bidders under ccv, bb, fp, env: the audit is clean and nothing is minted."""
    report = audit(run(mechanism, "random"))
    assert report.violation is None, str(report.violation)
    assert report.minted == 0
