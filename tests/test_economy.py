"""The Hayek economy in the episode kernel: endowed founders, bids capped at wealth, rent
each auction, bankruptcy between episodes; every rule visible in an audit-clean ledger."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agents.fixed import make_bidder
from agents.learning import LearningSociety
from agents.ppo_bidder import PPOBidders
from agents.settings import PPOConfig
from cli import app
from ledger.disk import DiskLedger
from ledger.events import ENVIRONMENT, TREASURY, Endow, Open, Rent
from ledger.payoffs import Sample
from ledger.store import MemoryLedger
from ledger.transaction import Body, Transaction
from ledger.units import UNIT
from market.audit import audit
from market.bus import Bus
from market.economy import Economy, EconomyConfig
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

Row = dict[str, Any]


def run(concurrency: int, rent: float = 0.01, episodes: int = 60) -> list[Row]:
    """A Chain economy of 12 primitives with random bidders, into a fresh ledger."""
    task = make_task("chain", primitives=12)
    settings = EconomyConfig(endowment=1.0, rent=rent, births=False)
    economy = Economy(settings, Society.of(task))
    rng = np.random.default_rng(3)
    policy = make_bidder("random", task, Society.of(task), 0.99, rng, economy=economy)
    config = RunConfig(
        task="chain", primitives=12, bidder="random", episodes=episodes,
        concurrency=concurrency, economy=settings,
    )  # fmt: skip
    ledger = MemoryLedger()
    simulate(config, ledger, policy, task=task, economy=economy)
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


@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_living_member_pays_rent_and_the_solvent_ones_bid(concurrency: int) -> None:
    """Each auction: one rent of the configured amount to the treasury from every living
    member, in the same transaction; bids from exactly those whose balance is not below the
    floor (0). An insolvent member awaiting its close sits out."""
    events = run(concurrency)
    before = balances_before(events)
    living: set[str] = set()
    sat_out = 0
    for tx in sorted({e["tx"] for e in events}):
        mine = [e for e in events if e["tx"] == tx]
        bidders = sorted(e["account"] for e in mine if e["kind"] == "bid")
        if bidders:
            rents = [e for e in mine if e["kind"] == "rent"]
            assert sorted(e["src"] for e in rents) == sorted(living)
            assert {(e["dst"], e["amount"]) for e in rents} == {(TREASURY, UNIT // 100)}
            solvent = sorted(a for a in living if before[tx].get(a, 0) >= 0)
            assert bidders == solvent
            sat_out += len(living) - len(solvent)
        living |= {e["dst"] for e in mine if e["kind"] == "endow"}  # members only
        living -= {e["account"] for e in mine if e["kind"] == "close"}
    assert sat_out > 0  # the rule was exercised


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


def test_episodes_that_extinction_ends_before_their_first_auction_are_not_counted() -> None:
    """With more episodes at a time than the founders can pay for, extinction comes before
    most of them hold an auction: the run's end counts only the episodes in the ledger."""
    events = run(200, episodes=200)
    starts = [e for e in events if e["kind"] == "episode_start"]
    ends = [e for e in events if e["kind"] == "episode_end"]
    (end,) = [e for e in events if e["kind"] == "run_end"]
    assert 0 < len(starts) < 200  # extinction came first
    assert end["episodes"] == len(ends) == len(starts)


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
    assert (out / "report" / "living.png").exists()
    bad = CliRunner().invoke(app, ["simulate", "--economy", "ayn"])
    assert bad.exit_code == 2 and "economy" in bad.output


def births_run(dividend: float = 0.5, episodes: int = 300) -> tuple[list[Row], Economy]:
    """Chain of L and R with truthful bidders, no rent and a low birth threshold: the
    members that sell the goal's last move grow rich and found children."""
    task = make_task("chain")
    settings = EconomyConfig(
        endowment=1.0, rent=0.0, birth_above=1.0, max_population=8, dividend=dividend
    )
    economy = Economy(settings, Society.of(task))
    policy = make_bidder("truthful", task, Society.of(task), 0.99, np.random.default_rng(0),
                         economy=economy)  # fmt: skip
    config = RunConfig(task="chain", bidder="truthful", episodes=episodes, economy=settings)
    ledger = MemoryLedger()
    simulate(config, ledger, policy, task=task, economy=economy)
    assert audit(ledger).ok, audit(ledger).violation
    return [e.model_dump() for e in ledger.events()], economy


def test_a_rich_member_founds_a_child_of_its_primitive_endowed_from_its_wealth() -> None:
    """Every birth opens the child and endows it from a parent richer than the threshold,
    which keeps at least 0; the child bids as its parent's primitive; never more than
    `max_population` members live at once."""
    events, economy = births_run()
    before = balances_before(events)
    opened = {e["account"]: e["tx"] for e in events if e["kind"] == "open"}
    gifts = [e for e in events if e["kind"] == "endow" and e["src"] != ENVIRONMENT]
    assert len(gifts) == 4  # the population cap: 4 founders, 8 slots
    primitive = {e["account"]: e["primitive"] for e in events if e["kind"] == "bid"}
    for e in gifts:
        parent, child = e["src"], e["dst"]
        assert opened[child] == e["tx"] and e["amount"] == UNIT
        assert before[e["tx"]][parent] > UNIT and before[e["tx"]][parent] - UNIT >= 0
        assert primitive[child] == primitive[parent]
        assert child.split(".")[0] == parent.split(".")[0]
    for tx in {e["tx"] for e in events if e["kind"] == "bid"}:
        assert len([e for e in events if e["tx"] == tx and e["kind"] == "bid"]) <= 8
    assert economy.population == 8 and None not in economy.accounts


def test_no_births_when_births_are_off_or_the_population_is_full() -> None:
    """`births=False`, or a cap at the founders' number, keeps the founders alone."""
    task = make_task("chain")
    for settings in (
        EconomyConfig(rent=0.0, birth_above=1.0, births=False),
        EconomyConfig(rent=0.0, birth_above=1.0, max_population=4),
    ):
        economy = Economy(settings, Society.of(task))
        economy.live.balances.update({"R.0": 5 * UNIT})
        assert economy.settle(set()) == [] and economy.population == 4
    with pytest.raises(ValueError, match="below the society's 4 founders"):
        Economy(EconomyConfig(max_population=3), Society.of(task))


def test_a_child_pays_its_parent_a_share_of_its_profit_above_its_high_water_mark() -> None:
    """Hand-made balances: a child endowed 1 that reaches 3 pays 1 (half its gain of 2);
    at 2 again it pays nothing; after a loss to 1.5 it pays nothing; at 2.4 it pays half
    of the 0.4 above its mark of 2."""
    task = make_task("chain")
    settings = EconomyConfig(rent=0.0, birth_above=1.0, dividend=0.5, max_population=5)
    economy = Economy(settings, Society.of(task))
    live = economy.live.balances
    live.update({"L.0": 0, "L.1": 0, "R.0": 3 * UNIT, "R.1": 0})
    settled(economy)  # R.0 founds R.2 with 1 credit
    assert economy.parent == {"R.2": "R.0"}
    live.update({"R.0": 0, "R.2": 3 * UNIT})
    paid = []
    for balance in (3 * UNIT, 2 * UNIT, 3 * UNIT // 2, 12 * UNIT // 5):
        live["R.2"] = balance
        paid.append([(m.__name__, v) for m, v in settled(economy)])
    assert paid == [[("Dividend", ("R.2", "R.0", UNIT))], [], [], [
        ("Dividend", ("R.2", "R.0", UNIT // 5))]]  # fmt: skip


def settled(economy: Economy) -> list[Body]:
    """Settle `economy` between episodes and apply the settlement as a run's bus does: to
    the live balances, then to the economy."""
    own = economy.settle(set())
    tx = Transaction((0, "run", -1, -1, 0.0), own)
    economy.live.apply(tx)
    economy.apply(tx)
    return own


def test_a_settlement_changes_nothing_until_its_events_are_applied() -> None:
    """`settle` decides on a copy: the members change only when its events are applied,
    so a settlement that is never committed leaves no child seated and no one closed."""
    task = make_task("chain")
    settings = EconomyConfig(rent=0.0, birth_above=1.0, bankrupt_below=0.5)
    economy = Economy(settings, Society.of(task))
    economy.live.balances.update({"L.0": 0, "L.1": UNIT, "R.0": 3 * UNIT // 2, "R.1": UNIT})
    before = list(economy.accounts)
    own = economy.settle(set())
    assert {m.__name__ for m, _ in own} >= {"Close", "Open", "Endow"}
    assert economy.accounts == before and economy.parent == {}
    tx = Transaction((0, "run", -1, -1, 0.0), own)
    economy.live.apply(tx)
    economy.apply(tx)
    assert "L.0" not in economy.accounts and economy.parent == {"R.2": "R.0"}
    assert economy.settle(set()) == []  # L.0 closed once, R.0 no longer rich


def test_children_pay_their_parents_only_in_an_audited_run() -> None:
    """In a run, every dividend goes from a child to the account that endowed it."""
    events, economy = births_run()
    dividends = [e for e in events if e["kind"] == "dividend"]
    assert dividends
    assert all(economy.parent[e["src"]] == e["dst"] for e in dividends)
    events, _ = births_run(dividend=0.0)
    assert not [e for e in events if e["kind"] == "dividend"]


def settle_heard(economy: Economy, learner: LearningSociety) -> None:
    """Settle `economy` between episodes; it and `learner` hear the births and closes from
    the ledger, as in a run."""
    bus = Bus(MemoryLedger())
    learner.attach(bus)
    bus.subscribe_all(economy.apply)
    members = [a for a in economy.accounts if a is not None]
    opening: list[Body] = [(Open, (a,)) for a in (ENVIRONMENT, TREASURY, *members)]
    for account, held in economy.live.balances.items():  # the books the test made up
        if held > 0:
            opening.append((Endow, (ENVIRONMENT, account, held)))
        else:
            opening.append((Rent, (account, TREASURY, -held)))
    bus.publish(Transaction((0, "run", -1, -1, 0.0), opening))
    bus.publish(Transaction((len(opening), "run", -1, -1, 0.0), economy.settle(set())))


@pytest.mark.parametrize("child", ["copy", "fresh"])
def test_a_learning_child_starts_from_its_parents_policy_perturbed_or_afresh(child: str) -> None:
    """A birth copies the parent's row of nets into the child's slot, the bid policy
    perturbed by `mutation` (or, fresh, starts uniform), and the child learns in its own
    batch."""
    task = make_task("chain")
    settings = EconomyConfig(rent=0.0, birth_above=1.0, mutation=0.05, child=child)
    economy = Economy(settings, Society.of(task))
    learner = LearningSociety(task, Society.of(task), PPOConfig(batch=4, minibatch=4), 0,
                              economy)  # fmt: skip
    assert isinstance(learner.agent, PPOBidders)
    bank = learner.agent.bank
    with torch.no_grad():
        for p in bank.parameters():
            p[2].normal_()  # the parent R.0 (slot 2) has learned something
    economy.live.balances.update({"R.0": 3 * UNIT})
    settle_heard(economy, learner)
    assert economy.accounts[4] == "R.2" and learner._row_of is not None
    assert learner._row_of["R.2"] == 4 and 4 not in learner.retired
    policy = {id(p) for p in bank.policy_params()}
    for p in bank.parameters():
        gap = float((p[4] - p[2]).detach().abs().max())
        if child == "fresh":
            assert gap > 0.1
        elif id(p) in policy:
            assert 0 < gap < 0.05 * 6
        else:
            assert gap == 0
    if child == "fresh":
        alpha, beta = bank.policy_table()
        assert torch.allclose(alpha[4], torch.ones(6)) and torch.allclose(beta[4], torch.ones(6))
    learner.retire("R.2")
    assert 4 in learner.retired and "R.2" not in learner._row_of


def test_the_issue_command_with_births_runs_and_audits(tmp_path: Path) -> None:
    """Births on the command line: a low threshold and no rent found children; the audit
    is clean and the population analysis counts them."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--task", "chain", "--mechanism", "ccv", "--bidder", "truthful",
        "--economy", "hayek", "--endowment", "1.0", "--rent", "0", "--birth-above", "1.0",
        "--dividend", "0.1", "--max-population", "6", "--episodes", "200",
        "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0 and "AUDIT CLEAN" in result.output, result.output
    audited = CliRunner().invoke(app, ["audit", str(out)])
    assert audited.exit_code == 0 and "dividends to parents" in audited.output
    from analyses.population import population
    from ledger.disk import DiskLedger

    pop = population(DiskLedger(out / "ledger").scan())
    assert pop["births"][-1] == 2 and pop["alive"].max() == 6
    bad = CliRunner().invoke(app, ["simulate", "--economy", "hayek", "--max-population", "3"])
    assert bad.exit_code == 2 and "below the society's 4 founders" in bad.output


def test_a_sample_of_a_member_closed_since_it_bid_is_dropped() -> None:
    """An auction's samples arrive after its next sale, so a loser may have closed (between
    other episodes) by then: its sample goes nowhere, least of all into a child now in its
    slot."""
    task = make_task("chain")
    settings = EconomyConfig(rent=0.0, birth_above=1.0)
    economy = Economy(settings, Society.of(task))
    learner = LearningSociety(task, Society.of(task), PPOConfig(batch=8, minibatch=8), 0,
                              economy)  # fmt: skip
    economy.live.balances.update({"L.0": -1, "R.0": 3 * UNIT})
    settle_heard(economy, learner)  # L.0 closes; R.0 founds R.2 in slot 0, L.0's
    assert economy.accounts[0] == "R.2" and learner._row_of == {"L.1": 1, "R.0": 2, "R.1": 3,
                                                                 "R.2": 0}  # fmt: skip
    learner._on_samples([Sample(0, 3, "L.0", 0, 3, UNIT // 2, 0),
                         Sample(0, 3, "R.2", 1, 4, UNIT // 4, 0)])  # fmt: skip
    assert learner._states[0] == [4] and learner._bids[0] == [0.25]
    assert learner.recent_bids[0] == deque() and list(learner.recent_bids[1]) == [0.25]


def test_the_ledger_alone_restores_the_economy() -> None:
    """Folding a run's ledger gives the economy the kernel ended with: slots, primitives,
    the living, parents, high-water marks and the next child's name."""
    task = make_task("chain")
    settings = EconomyConfig(rent=0.001, birth_above=1.0, max_population=8, dividend=0.5)
    economy = Economy(settings, Society.of(task))
    policy = make_bidder("truthful", task, Society.of(task), 0.99, np.random.default_rng(0),
                         economy=economy)  # fmt: skip
    config = RunConfig(task="chain", bidder="truthful", episodes=400, economy=settings)
    ledger = MemoryLedger()
    simulate(config, ledger, policy, task=task, economy=economy)
    kinds = {e.kind for e in ledger.events()}
    assert {"close", "dividend"} <= kinds and economy.parent  # deaths, births and dividends
    restored = Economy.restore(settings, Society.of(task), ledger.scan())
    assert restored.population == economy.population
    for field in ("accounts", "primitive", "alive", "parent", "high", "born"):
        assert getattr(restored.members, field) == getattr(economy.members, field), field


def test_an_economy_run_resumes_where_its_ledger_stops(tmp_path: Path) -> None:
    """`--resume` continues a learning economy from its ledger and snapshot: nobody is
    endowed twice, the dead stay dead, and the joined ledger audits clean."""
    out = tmp_path / "run"
    first = CliRunner().invoke(app, [
        "simulate", "--task", "chain", "--learn", "--economy", "hayek", "--endowment", "2",
        "--rent", "0.001", "--birth-above", "2.2", "--concurrency", "4", "--steps", "2000",
        "--out", str(out), "--set", "ppo.batch=64",
    ])  # fmt: skip
    assert first.exit_code == 0, first.output
    ledger = DiskLedger(out / "ledger")
    before = Economy.restore(EconomyConfig(), Society.of(make_task("chain")), ledger.scan())
    ledger.close()
    more = CliRunner().invoke(app, ["simulate", "--resume", str(out), "--steps", "2000"])
    assert more.exit_code == 0 and "AUDIT CLEAN" in more.output, more.output
    events = [e for e in DiskLedger(out / "ledger").events()]
    founders = [e for e in events if e.kind == "endow" and e.src == ENVIRONMENT]
    assert len(founders) == 4 and len([e for e in events if e.kind == "run_start"]) == 2
    dead = {a for a, alive in before.members.alive.items() if not alive}
    assert dead and before.parent  # members died and were born before the resume
    resumed = events[[e.kind for e in events].index("run_start", 1) :]
    assert not [e for e in resumed if e.kind == "bid" and e.account in dead]
