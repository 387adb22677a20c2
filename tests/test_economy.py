"""The Hayek economy in the episode kernel: endowed founders, bids capped at wealth, rent
each auction, bankruptcy between episodes; every rule visible in an audit-clean ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from agents.fixed import make_bidder
from agents.learning import LearningSociety
from agents.settings import PPOConfig
from cli import app
from ledger.events import ENVIRONMENT, TREASURY
from ledger.store import MemoryLedger
from ledger.units import UNIT
from market.audit import audit
from market.economy import EconomyConfig
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

Row = dict[str, Any]


def run(concurrency: int, rent: float = 0.01, episodes: int = 60) -> list[Row]:
    """A Chain economy of 12 primitives with random bidders, into a fresh ledger."""
    task = make_task("chain", primitives=12)
    policy = make_bidder("random", task, Society.of(task), 0.99, np.random.default_rng(3))
    config = RunConfig(
        task="chain", primitives=12, bidder="random", episodes=episodes,
        concurrency=concurrency, economy=EconomyConfig(endowment=1.0, rent=rent),
    )  # fmt: skip
    ledger = MemoryLedger()
    simulate(config, ledger, policy, task=task)
    assert audit(ledger).ok, audit(ledger).violation
    return [e.model_dump() for e in ledger.events()]


def balances_before(events: list[Row]) -> dict[int, dict[str, int]]:
    """Every account's balance before each transaction, by the transaction's first seq."""
    out: dict[int, dict[str, int]] = {}
    now: dict[str, int] = {}
    for e in events:
        if e["tx"] not in out:
            out[e["tx"]] = dict(now)
        if "src" in e:
            now[e["src"]] = now.get(e["src"], 0) - e["amount"]
            now[e["dst"]] = now.get(e["dst"], 0) + e["amount"]
    return out


@pytest.mark.parametrize("concurrency", [1, 4])
def test_founders_are_endowed_and_every_bid_is_capped_at_its_wealth(concurrency: int) -> None:
    """Each founder gets the endowment from the environment at the opening; each bid records
    its bidder's balance (never below 0) as its cap, and stays within it."""
    events = run(concurrency)
    endows = [e for e in events if e["kind"] == "endow"]
    assert len(endows) == 24 and {e["src"] for e in endows} == {ENVIRONMENT}
    assert {e["amount"] for e in endows} == {UNIT}
    before = balances_before(events)
    bids = [e for e in events if e["kind"] == "bid"]
    assert bids
    for b in bids:
        cap = max(before[b["tx"]].get(b["account"], 0), 0)
        assert b["cap"] == cap and b["amount"] <= cap


def test_every_living_bidder_pays_rent_each_auction() -> None:
    """One rent of the configured amount to the treasury per bid, in the same transaction."""
    events = run(1)
    for tx in {e["tx"] for e in events if e["kind"] == "bid"}:
        bidders = sorted(e["account"] for e in events if e["tx"] == tx and e["kind"] == "bid")
        rents = [e for e in events if e["tx"] == tx and e["kind"] == "rent"]
        assert sorted(e["src"] for e in rents) == bidders
        assert {(e["dst"], e["amount"]) for e in rents} == {(TREASURY, UNIT // 100)}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_bankrupt_members_close_between_episodes_and_never_bid_again(concurrency: int) -> None:
    """A member closes only below the floor, liquidated to 0 first, and never bids after;
    with everyone gone the run stops starting episodes (extinction)."""
    events = run(concurrency)
    before = balances_before(events)
    closes = {e["account"]: e for e in events if e["kind"] == "close"}
    assert closes  # random bidders lose money under CCV: some go bankrupt
    for account, close in closes.items():
        assert before[close["tx"]][account] < 0
        assert not [e for e in events if e["kind"] == "bid" and e["seq"] > close["seq"]
                    and e["account"] == account]  # fmt: skip
    starts = [e["episode"] for e in events if e["kind"] == "episode_start"]
    assert len(closes) < 24 or len(starts) < 60  # extinction ends the run early


def test_without_rent_budgets_keep_every_member_solvent() -> None:
    """With no rent, a member pays at most what it has: no balance ever falls below 0 and
    nobody closes (random bidders without budgets run into debt at once)."""
    events = run(1, rent=0.0, episodes=30)
    assert not [e for e in events if e["kind"] == "close"]
    members = {e["account"] for e in events if e["kind"] == "bid"}
    for balances in balances_before(events).values():
        assert min(balances.get(a, 0) for a in members) >= 0


def test_a_retired_primitive_no_longer_holds_up_the_updates() -> None:
    """Once both clones of a primitive have closed, the others update on full batches."""
    task = make_task("chain")
    learner = LearningSociety(task, Society.of(task), PPOConfig(batch=4, minibatch=4), seed=0)
    learner._states[1].extend([0] * 4)
    learner._bids[1].extend([0.5] * 4)
    learner._utilities[1].extend([0.1] * 4)
    assert not learner._ready()  # primitive L (0) has no samples yet
    learner.retire("L.0")
    assert not learner.updates
    learner.retire("L.1")
    assert len(learner.updates) == 1 and learner.retired == {0}


def test_the_issue_command_runs_an_audited_economy(tmp_path: Path) -> None:
    """`market simulate ... --economy hayek --endowment 1.0 --rent 0.001 --primitives 12`
    writes an audit-clean ledger whose report plots the population."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--task", "chain", "--mechanism", "ccv", "--learn", "--economy", "hayek",
        "--endowment", "1.0", "--rent", "0.001", "--primitives", "12", "--steps", "300",
        "--seed", "0", "--out", str(out), "--set", "ppo.batch=64",
    ])  # fmt: skip
    assert result.exit_code == 0 and "AUDIT CLEAN" in result.output, result.output
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0
    assert (out / "report" / "population.png").exists()
    bad = CliRunner().invoke(app, ["simulate", "--economy", "ayn"])
    assert bad.exit_code == 2 and "economy" in bad.output
