"""Runs stepped from outside: `advance` runs the kernel to its next question, `submit`
answers it, and a driven run writes the ledger the same policy writes on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pytest

from agents.fixed import RandomBidder
from agents.fixed_control import RandomPolicy
from ledger.store import MemoryLedger
from market.audit import audit
from market.control import ControlRunConfig, open_control
from market.core import DRIVEN
from market.run import KernelChoice, OpenRun, RunConfig, open_auction
from market.society import Society
from market.tasks import make_task


def drive(run: OpenRun, answer: Callable[..., Any], episodes: int, concurrency: int) -> int:
    """Step `run` through `episodes` episodes, answering each question with `answer`;
    return the number of questions asked."""
    run.begin(episodes, concurrency)
    asked = 0
    while run.engine.advance():
        assert run.engine.question is not None
        run.engine.submit(answer(*run.engine.question))
        asked += 1
    run.close()
    return asked


def frame(ledger: MemoryLedger) -> pl.DataFrame:
    return ledger.scan().collect()


@pytest.mark.parametrize(("kernel", "concurrency"), [("episodes", 1), ("rounds", 4)])
def test_a_driven_auction_run_writes_the_ledger_its_policy_writes(
    kernel: KernelChoice, concurrency: int
) -> None:
    """Random bids submitted from outside give, byte for byte, the ledger of the same random
    bidder run as the policy; the round kernel asks once per round, for every due episode."""
    config = RunConfig(task="chain", mechanism="ccv", episodes=6, concurrency=concurrency)
    n = len(Society.of(make_task("chain")).accounts)
    alone = MemoryLedger()
    open_auction(config, alone, RandomBidder(n, np.random.default_rng(3)), kernel=kernel).run(
        config.episodes, concurrency, None
    )
    driven = MemoryLedger()
    outside = RandomBidder(n, np.random.default_rng(3))
    asked = drive(open_auction(config, driven, DRIVEN, kernel=kernel), outside.bids, 6, concurrency)
    assert frame(driven).equals(frame(alone))
    assert audit(driven).ok
    auctions = frame(driven).filter(pl.col("kind") == "allocate").height
    assert (asked == auctions) if concurrency == 1 else (asked < auctions)


def test_a_driven_control_run_writes_the_ledger_its_policy_writes() -> None:
    """Random controls for 3 episodes at once, submitted from outside: the same ledger."""
    config = ControlRunConfig(task="integrator", agents=2, policy="random", episodes=5,
                              concurrency=3)  # fmt: skip
    alone = MemoryLedger()
    policy = RandomPolicy(5, 2, np.random.default_rng(1))
    open_control(config, alone, policy).run(config.episodes, 3, None)
    driven = MemoryLedger()
    outside = RandomPolicy(5, 2, np.random.default_rng(1))
    drive(open_control(config, driven, DRIVEN), outside.act, 5, 3)
    assert frame(driven).equals(frame(alone))
    assert audit(driven).ok


def test_a_driven_run_is_stepped_not_run() -> None:
    """Running a driven run to the end, or answering before a question, is refused."""
    config = RunConfig(task="chain", episodes=1)
    run = open_auction(config, MemoryLedger(), DRIVEN, kernel="episodes")
    with pytest.raises(RuntimeError, match="no decision is due"):
        run.engine.submit(np.zeros((1, 4)))
    with pytest.raises(RuntimeError, match="stepped by its driver"):
        run.run(1, 1, None)
