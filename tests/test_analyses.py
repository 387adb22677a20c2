"""Analyses on a small hand-computed ledger."""

from __future__ import annotations

import polars as pl
from conftest import ALICE, BOB, history

from analyses.wealth import returns, wealth
from ledger.events import ENVIRONMENT
from ledger.replay import replay
from ledger.store import MemoryLedger


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
