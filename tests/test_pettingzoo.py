"""The markets as PettingZoo ParallelEnvs: conformance, the ledger, an outside learner."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
from pettingzoo.test import parallel_api_test, parallel_seed_test

from agents.pettingzoo_env import AuctionMarketEnv, ControlMarketEnv
from ledger.events import ENVIRONMENT
from ledger.store import MemoryLedger
from ledger.units import quantise_bids, to_units
from ledger.utilities import utilities
from market.audit import audit

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))


def test_parallel_api_conformance() -> None:
    """PettingZoo's own API test, over several episodes of the integrator."""
    env = ControlMarketEnv("integrator", 3)
    parallel_api_test(env, num_cycles=250)
    env.close()


def test_parallel_seed_conformance() -> None:
    """PettingZoo's own seed test: the same seed and actions, the same episode."""
    parallel_seed_test(lambda: ControlMarketEnv("pendulum", 2), num_cycles=250)


def test_auction_parallel_api_and_seed_conformance() -> None:
    """PettingZoo's API and seed tests on the auction market (cloned CCV Chain, Vickrey
    Duality)."""
    env = AuctionMarketEnv("chain", "ccv")
    parallel_api_test(env, num_cycles=200)
    env.close()
    parallel_seed_test(lambda: AuctionMarketEnv("duality", "v"), num_cycles=200)


def test_auction_rewards_are_the_ledgers_utilities_and_bids_its_bids() -> None:
    """Random bids over three episodes: each agent's summed reward is, to the unit, its summed
    utility as the stored ledger folds it exactly (with the env's gamma as a Fraction), every
    Bid event is the bid sent, quantised, and the run audits clean."""
    env = AuctionMarketEnv("chain", "ccv")
    rng = np.random.default_rng(1)
    sent, got = [], dict.fromkeys(env.possible_agents, 0.0)
    env.reset(seed=2)
    for episode in range(3):
        if episode:
            env.reset()
        while env.agents:
            bids = {a: np.array([rng.random()]) for a in env.agents}
            _, rewards, _, _, _ = env.step(bids)
            sent.append([float(bids[a][0]) for a in env.possible_agents])
            for a, r in rewards.items():
                got[a] += r
    env.close()
    assert env.ledger is not None and audit(env.ledger).ok
    events = list(env.ledger.events())
    stored = utilities(events, Fraction(env.config.gamma))  # exact: the float's own value
    for account in env.possible_agents:
        folded = sum((u for (_, _, a), u in stored.items() if a == account), Fraction(0))
        assert to_units(got[account]) == round(folded)  # units, both rounded to nearest/even
    placed = [e.amount for e in events if e.kind == "bid"]
    assert placed == [units for row in sent for units in quantise_bids(row)]
    assert sum(1 for e in events if e.kind == "episode_end") == 3


def play(seed: int, episodes: int = 2) -> tuple[ControlMarketEnv, list[dict[str, int]],
                                                list[dict[str, float]]]:  # fmt: skip
    """Random actions (seeded) for `episodes` episodes; the env, its actions and rewards."""
    env = ControlMarketEnv("integrator", 2)
    rng = np.random.default_rng(seed)
    actions, rewards = [], []
    env.reset(seed=seed)
    for episode in range(episodes):
        if episode:
            env.reset()
        while env.agents:
            chosen = {a: int(rng.integers(5)) for a in env.agents}
            _, got, _, _, _ = env.step(chosen)
            actions.append(chosen)
            rewards.append(got)
    env.close()
    return env, actions, rewards


def test_every_step_is_in_the_ledger_and_rewards_are_the_ledgers() -> None:
    """Each step's actions are its Order events; each reward is the agent's Reward event; the
    closed run audits clean."""
    env, actions, rewards = play(seed=3)
    assert env.ledger is not None and audit(env.ledger).ok
    frame = env.ledger.scan().collect()
    orders = frame.filter(pl.col("kind") == "order").sort("seq")
    assert orders["action"].to_list() == [s[a] for s in actions for a in ("agent0", "agent1")]
    paid = frame.filter(pl.col("kind") == "reward").sort("seq")
    sign = np.where(paid["src"].to_numpy() == ENVIRONMENT, 1, -1)
    units = (sign * paid["amount"].to_numpy()).reshape(-1, 2).tolist()
    assert units == [[to_units(r["agent0"]), to_units(r["agent1"])] for r in rewards]
    assert frame.filter(pl.col("kind") == "episode_end").height == 2
    assert frame.filter(pl.col("kind") == "run_end").height == 1


def test_same_seed_same_actions_same_ledger() -> None:
    """Two envs, one seed, one action sequence: equal ledgers; another seed differs."""
    a, b, c = play(5)[0], play(5)[0], play(6)[0]
    assert isinstance(a.ledger, MemoryLedger) and isinstance(b.ledger, MemoryLedger)
    assert a.ledger.scan().collect().equals(b.ledger.scan().collect())
    assert c.ledger is not None
    assert not a.ledger.scan().collect().equals(c.ledger.scan().collect())


def test_an_outside_q_learner_improves_through_the_env() -> None:
    """The example's independent tabular Q-learners raise the team's return well above the
    random start within 150 episodes, and the ledger of it all audits clean."""
    from pettingzoo_control import train

    returns, env = train(150, seed=0)
    assert np.mean(returns[-15:]) > np.mean(returns[:15]) + 300, (returns[:15], returns[-15:])
    assert env.ledger is not None and audit(env.ledger).ok


def test_a_run_cut_mid_episode_writes_no_run_end_and_the_next_starts_afresh() -> None:
    """A reset in the middle of an episode leaves that run's ledger without a RunEnd (it
    would have to end the open episode); the new run starts on the same seed, with the
    same first observations, and closes properly."""
    env = ControlMarketEnv("integrator", 2)
    first, _ = env.reset(seed=4)
    env.step(dict.fromkeys(env.agents, 0))
    cut = env.ledger
    again, _ = env.reset()
    assert cut is not None and env.ledger is not cut
    kinds = cut.scan().collect()["kind"].to_list()
    assert "order" in kinds and "run_end" not in kinds
    assert all(np.array_equal(first[a], again[a]) for a in first)
    while env.agents:
        env.step(dict.fromkeys(env.agents, 0))
    env.close()
    assert env.ledger is not None and audit(env.ledger).ok
    assert env.ledger.scan().collect()["kind"].to_list().count("run_end") == 1
