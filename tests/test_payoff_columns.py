"""The column-wise payoff fold gives the one-at-a-time fold's samples, bit for bit, in order."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.fixed import RandomBidder
from ledger.batch import of_transactions
from ledger.payoff_columns import BatchPayoffTracker, SampleColumns
from ledger.payoffs import PayoffTracker, Sample
from ledger.store import MemoryLedger
from ledger.transaction import Transaction
from ledger.utilities import utilities
from market.bus import Bus
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

GAMMA = 0.99
Row = tuple[Any, ...]


def rows_of(samples: SampleColumns) -> list[Row]:
    """Samples as (episode, step, account, primitive, state, bid, utility) rows."""
    names = [samples.strings[a] for a in samples.account.tolist()]
    cols = (samples.episode, samples.step, samples.primitive, samples.state, samples.bid)
    e, t, p, s, b = (c.tolist() for c in cols)
    return list(zip(e, t, names, p, s, b, samples.utility.tolist(), strict=True))


def history(task: str, mechanism: str, concurrency: int, episodes: int = 25) -> list[Transaction]:
    """A random-bidder run's committed transactions (episode kernel)."""
    ledger = MemoryLedger()
    society = Society.of(make_task(task))
    policy = RandomBidder(len(society.accounts), np.random.default_rng(5))
    config = RunConfig(
        task=task, mechanism=mechanism, bidder="random", episodes=episodes, concurrency=concurrency
    )
    simulate(config, ledger, policy, kernel="episodes")
    return [Transaction.of(list(g)) for _, g in itertools.groupby(ledger.events(), lambda e: e.tx)]


def one_at_a_time(txs: list[Transaction]) -> list[Row]:
    """The reference: `PayoffTracker` fed one transaction at a time."""
    out: list[Sample] = []
    tracker = PayoffTracker(GAMMA, out.extend)
    for tx in txs:
        tracker.apply(tx)
    return [tuple(s) for s in out]


def in_batches(txs: list[Transaction], cuts: list[int]) -> list[Row]:
    """`BatchPayoffTracker` fed the same transactions cut into batches at `cuts`."""
    out: list[Row] = []
    tracker = BatchPayoffTracker(GAMMA, lambda s: out.extend(rows_of(s)))
    edges = [0, *sorted(set(cuts)), len(txs)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            tracker.apply_batch(of_transactions(txs[a:b]))
    return out


@pytest.mark.parametrize("mechanism", ["ccv", "v", "bb", "fp", "env"])
@pytest.mark.parametrize(("task", "concurrency"), [("chain", 1), ("chain", 6), ("duality", 3)])
def test_same_samples_as_one_at_a_time(mechanism: str, task: str, concurrency: int) -> None:
    """Whole history as one batch, and a batch per transaction: the reference's samples."""
    txs = history(task, mechanism, concurrency)
    expected = one_at_a_time(txs)
    assert expected
    assert in_batches(txs, []) == expected
    assert in_batches(txs, list(range(len(txs)))) == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_cut_into_batches_gives_the_same_samples(cuts: list[int]) -> None:
    """Auctions left open at a batch's end are carried into the next batch correctly."""
    txs = history("chain", "v", concurrency=4, episodes=15)
    assert in_batches(txs, [c % len(txs) for c in cuts]) == one_at_a_time(txs)


def test_utilities_equal_the_stored_ledgers_through_the_bus() -> None:
    """Under the round kernel, each delivered utility is the stored-ledger fold's, exactly."""
    ledger = MemoryLedger()
    bus = Bus(ledger)
    got: list[Row] = []
    tracker = BatchPayoffTracker(GAMMA, lambda s: got.extend(rows_of(s)))
    bus.subscribe_all(lambda tx: None, tracker.apply_batch)
    society = Society.of(make_task("duality"))
    policy = RandomBidder(len(society.accounts), np.random.default_rng(2))
    config = RunConfig(task="duality", mechanism="v", bidder="random", episodes=40, concurrency=8)
    simulate(config, ledger, policy, bus=bus, kernel="rounds")
    stored = utilities(ledger.events(), GAMMA)
    assert len(got) == len(stored)
    assert {(e, t, a): u for e, t, a, *_, u in got} == stored


def test_auction_numbers_follow_the_finishing_order() -> None:
    """Each sample names its finished auction; the numbers run 0, 1, ... with no gaps."""
    txs = history("chain", "ccv", concurrency=5)
    seen: list[SampleColumns] = []
    BatchPayoffTracker(GAMMA, seen.append).apply_batch(of_transactions(txs))
    (samples,) = seen
    auctions = samples.auction
    assert auctions[0] == 0 and np.all(np.diff(auctions) >= 0)
    assert np.array_equal(np.unique(auctions), np.arange(auctions[-1] + 1))
    assert len(samples) == 4 * (auctions[-1] + 1)  # four bidders in every cloned Chain auction
