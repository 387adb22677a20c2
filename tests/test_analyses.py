"""Analyses on a small hand-computed ledger."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import ACCOUNTS, ALICE, BOB, control_history, history

from agents.fixed import make_bidder
from analyses.auctions import auctions, bids, bids_against, prices, winners
from analyses.control import agent_returns
from analyses.income import income
from analyses.inequality import gini, gini_over_time, inequality, lorenz, top_share
from analyses.wealth import late_episode, returns, returns_curve, wealth, wealth_over_time
from ledger.events import ENVIRONMENT, EventBase
from ledger.replay import replay
from ledger.store import MemoryLedger
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task


def test_wealth_equals_replay_and_lists_idle_accounts() -> None:
    """Wealth per account is the replay, with every opened account present (0 if idle)."""
    ledger = MemoryLedger()
    for tx in history():
        ledger.append(tx)
    frame = wealth(ledger.scan())
    balances = replay(ledger)
    assert set(frame["account"]) == ledger.accounts
    for account, units in frame.select("account", "units").iter_rows():
        assert units == balances.get(account, 0)
    assert frame["units"].sum() == 0


def test_wealth_by_hand_for_one_payment() -> None:
    """A single reward of 3 credit: +3 to the winner, -3 to the environment, 0 elsewhere."""
    from conftest import moves, opening

    from ledger.events import Reward

    ledger = MemoryLedger()
    start = opening()
    ledger.append(start)
    ledger.append(moves(len(start), (Reward, ENVIRONMENT, ALICE, 3_000_000_000)))
    frame = wealth(ledger.scan()).filter(pl.col("units") != 0)
    assert frame.rows() == [(ALICE, 3_000_000_000, 3.0), (ENVIRONMENT, -3_000_000_000, -3.0)]
    assert wealth(ledger.scan(), upto=len(start) - 1)["units"].to_list() == [0] * 4
    assert BOB in set(wealth(ledger.scan())["account"])


def test_returns_come_from_episode_ends() -> None:
    """One row per finished episode with its steps and return."""
    ledger = MemoryLedger()
    for tx in history():
        ledger.append(tx)
    ends = [e for e in ledger.events() if e.kind == "episode_end"]
    frame = returns(ledger.scan())
    assert frame.select("episode", "steps", "units").rows() == [
        (e.episode, e.steps, e.episode_return) for e in ends
    ]
    assert frame.rows() == [(0, 3, 36, 36e-9)]  # conftest's episode: rewards 10 - 4 + 30


# --- analyses checked against the hand-computed conftest ledger -----------------
# conftest.history(): three Vickrey auctions. Step 0: alice buys from the environment at 5,
# earns 10. Step 1: bob buys from alice at 6 (3 minted to alice), pays a 4 penalty. Step 2:
# alice buys from bob at 7 (3 minted to bob), earns 30. Bids: the winner price + 3 (primitive
# 0), the loser the price (primitive 1), prices 5, 6, 7 for states 0, 1, 2.


def stored(txs: list[list[EventBase]]) -> MemoryLedger:
    """A memory ledger holding `txs`."""
    ledger = MemoryLedger()
    for tx in txs:
        ledger.append(tx)
    return ledger


def test_income_by_hand() -> None:
    """rewards, sales, purchases, mint and their net (the balance) per account, by hand."""
    frame = income(stored(history()).scan())
    rows = frame.select("account", "rewards", "sales", "purchases", "mint", "net").rows()
    assert rows == [
        (ALICE, 40, 6, 12, 3, 37),
        ("auctioneer", 0, 0, 0, -6, -6),
        (BOB, -4, 7, 6, 3, 0),
        (ENVIRONMENT, -36, 5, 0, 0, -31),
    ]
    assert frame["net"].to_list() == wealth(stored(history()).scan())["units"].to_list()


def test_auctions_by_hand() -> None:
    """One row per auction: state, winner, its bid, the price and the mint."""
    frame = auctions(stored(history()).scan()).collect()
    rows = frame.select("step", "state", "winner", "primitive", "bid", "price", "minted").rows()
    assert rows == [
        (0, 0, ALICE, 0, 8, 5, 0),
        (1, 1, BOB, 0, 9, 6, 3),
        (2, 2, ALICE, 0, 10, 7, 3),
    ]


def test_prices_winners_and_bids_by_hand() -> None:
    """Prices per state, the winning primitive's share, mean bids and their gap to Q*."""
    events = stored(history()).scan()
    price = prices(events)
    assert price["state"].to_list() == [0, 1, 2]
    assert price["mean_price"].to_list() == pytest.approx([5e-9, 6e-9, 7e-9])
    assert winners(events).select("state", "primitive", "wins", "share").rows() == [
        (0, 0, 1, 1.0), (1, 0, 1, 1.0), (2, 0, 1, 1.0)
    ]  # fmt: skip
    table = bids(events)
    assert table.select("state", "primitive").rows() == [(s, p) for s in range(3) for p in (0, 1)]
    assert table["mean_bid"].to_list() == pytest.approx([8e-9, 5e-9, 9e-9, 6e-9, 10e-9, 7e-9])
    q = np.arange(6, dtype=np.float64).reshape(3, 2)
    gaps = bids_against(table, q)
    assert np.allclose(gaps["gap"].to_numpy(), table["mean_bid"].to_numpy() - q.ravel())
    assert bids(events, since_episode=1).height == 0
    # over every state at once (a task whose states do not recur): one row per primitive
    assert prices(events, per_state=False).select("state", "auctions").rows() == [(None, 3)]
    assert prices(events, per_state=False)["mean_price"].to_list() == pytest.approx([6e-9])
    overall = winners(events, per_state=False)
    assert overall.select("state", "primitive", "wins", "share").rows() == [(None, 0, 3, 1.0)]
    overall = bids(events, per_state=False)
    assert overall.select("state", "primitive", "bids").rows() == [(None, 0, 3), (None, 1, 3)]
    assert overall["mean_bid"].to_list() == pytest.approx([9e-9, 6e-9])


def test_gini_by_hand_with_and_without_debt() -> None:
    """The textbook Gini without debt; the normalised one (in [0, 1]) with it."""
    assert gini([0.0, 37.0]) == 0.5
    assert gini([1.0, 1.0, 1.0]) == 0.0
    assert gini([]) == 0.0 and gini([0.0, 0.0]) == 0.0
    assert gini([-1.0, 1.0]) == 0.5
    assert gini([-2.0, 0.0, 2.0]) == pytest.approx(16 / 24)
    assert gini([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.25)  # 20 / (2 * 16 * 2.5)
    assert top_share([1.0, 2.0, 3.0, 4.0], 1) == 0.4
    assert top_share([-3.0, 1.0], 1) is None


def test_inequality_and_lorenz_by_hand() -> None:
    """Agents alice (37) and bob (0): Gini 0.5, alice holds everything; Lorenz (0, 0, 1)."""
    events = stored(history()).scan()
    row = inequality(events).row(0, named=True)
    assert row["agents"] == 2 and row["gini"] == 0.5 and row["top1_share"] == 1.0
    assert row["in_debt"] == 0 and row["total_credit"] == pytest.approx(37e-9)
    curve = lorenz(events)
    assert curve["population_share"].to_list() == [0.0, 0.5, 1.0]
    assert curve["wealth_share"].to_list() == [0.0, 0.0, 1.0]
    early = inequality(events, upto=4).row(0, named=True)  # nothing has moved yet
    assert early["gini"] == 0.0 and early["top1_share"] is None


def test_wealth_over_time_by_hand() -> None:
    """Six events in two checkpoints: nothing after seq 2, the reward after seq 5."""
    from conftest import moves, opening

    from ledger.events import Reward

    ledger = MemoryLedger()
    start = opening()
    ledger.append(start)
    ledger.append(moves(len(start), (Reward, ENVIRONMENT, ALICE, 3_000_000_000)))
    frame = wealth_over_time(ledger.scan(), points=2)
    alice = frame.filter(pl.col("account") == ALICE)
    assert alice.select("seq", "units").rows() == [(5, 3_000_000_000)]  # opened at seq 3
    assert frame.filter(pl.col("seq") == 5)["units"].sum() == 0
    assert frame.height == 2 + 4  # environment and auctioneer are opened by seq 2
    assert not frame["closed"].any() and frame["env_steps"].to_list() == [0] * 6
    full = wealth_over_time(stored(history()).scan(), points=7)
    last = full.filter(pl.col("seq") == full["seq"].max()).select("account", "units")
    assert last.rows() == wealth(stored(history()).scan()).select("account", "units").rows()
    assert gini_over_time(full)["gini"].to_list()[-1] == 0.5


def test_agent_returns_by_hand() -> None:
    """conftest's control run: each agent pays 10 (alice) or 11 (bob) per step, two steps."""
    frame = agent_returns(stored(control_history()).scan())
    assert frame.select("episode", "agent", "units").rows() == [(0, ALICE, -20), (0, BOB, -22)]


# --- the speed tricks keep the results exact -------------------------------------


def test_only_transfers_carry_a_payer() -> None:
    """The money analyses take a row with `src` set for a transfer (analyses.flows): true
    while exactly the transfer kinds have a `src` field."""
    from ledger.events import FIELDS, KIND, TRANSFER_KINDS

    assert {KIND[model] for model, fields in FIELDS.items() if "src" in fields} == TRANSFER_KINDS


def test_analyses_do_not_depend_on_row_order() -> None:
    """The same numbers from the events in reverse order: wealth_over_time then finds that the
    last row does not hold the largest seq, and the openings are not where a ledger has them."""
    events = stored(history()).scan()
    backwards = events.reverse()
    assert wealth(backwards).equals(wealth(events))
    assert income(backwards).equals(income(events))
    assert wealth_over_time(backwards, points=7).equals(wealth_over_time(events, points=7))
    assert prices(backwards).equals(prices(events))
    assert winners(backwards).equals(winners(events))


def test_openings_are_found_when_their_rows_moved() -> None:
    """If the rows counted as openings hold other events when read again, every row is read."""
    from analyses.flows import _opened

    events = stored(history()).scan()
    misplaced = pl.DataFrame({"_openings": [4], "_first_opening": [0], "_last_opening": [0]})
    assert sorted(_opened(events, misplaced)) == sorted(ACCOUNTS)


def test_the_learning_curve_is_the_mean_of_each_block_of_episodes() -> None:
    """Down-sampled in the query: each block's mean, min and max are those of its episodes."""
    config = RunConfig(task="chain", mechanism="ccv", bidder="random", episodes=103, seed=3)
    task = make_task("chain")
    ledger = MemoryLedger()
    bidder = make_bidder("random", task, Society.of(task), 0.99, np.random.default_rng(3))
    simulate(config, ledger, bidder)
    events = ledger.scan()
    per_episode = returns(events)
    curve = returns_curve(events, 10)
    assert curve.height == 10 and curve["episodes"].sum() == 103
    width = 11  # ceil(103 / 10)
    for first, n, mean, lo, hi in curve.iter_rows():
        block = per_episode.filter(pl.col("episode").is_between(first, first + width - 1))
        assert n == block.height
        assert mean == pytest.approx(block["credit"].mean())
        assert (lo, hi) == (block["credit"].min(), block["credit"].max())
    assert late_episode(events, 0.1) == per_episode["episode"][int(103 * 0.9)]
