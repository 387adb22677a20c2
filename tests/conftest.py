"""Shared fixtures and small builders of hand-made transactions for the ledger tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ledger.disk import DiskLedger
from ledger.events import (
    CONTROL,
    ENVIRONMENT,
    SYSTEM,
    TREASURY,
    Allocate,
    Balance,
    Bid,
    Close,
    Dividend,
    Endow,
    EpisodeEnd,
    EpisodeStart,
    EventBase,
    Liquidate,
    Mint,
    Open,
    Order,
    Pay,
    Rent,
    Reward,
    RunEnd,
    RunStart,
    Transfer,
    Transform,
    Transition,
)
from ledger.store import Ledger, MemoryLedger

RUN = "test-run"
ALICE, BOB = "alice", "bob"
ACCOUNTS: tuple[str, ...] = (ENVIRONMENT, "auctioneer", ALICE, BOB)
SMALL_BATCH = 4
"""Events per disk batch in tests: small, so that a short history spans several segments."""

Tx = list[EventBase]
Move = tuple[type[Transfer], str, str, int]
"""(kind, src, dst, amount) of one transfer."""


def as_in_a_terminal() -> None:
    """A child process's `preexec_fn`: SIGINT at its default, as a command typed in a terminal
    starts. Without it a child inherits this process's SIGINT, which is ignored when the suite
    runs as a background job, and a test's Ctrl-C could not reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def head(seq: int, tx: int, step: int = 0) -> dict[str, Any]:
    """The fields every event carries; step -1 marks a run's opening or closing (episode -1)."""
    episode = -1 if step == -1 else 0
    return {"seq": seq, "tx": tx, "run": RUN, "episode": episode, "step": step, "time": tx / 4}


def opening(first: int = 0, accounts: Sequence[str] = ACCOUNTS) -> Tx:
    """A run's opening transaction: RunStart, then one Open per account."""
    h = head(first, first, step=-1)
    return [
        RunStart(**h, seed=7, config='{"task": "chain"}'),
        *(Open(**{**h, "seq": first + 1 + i}, account=a) for i, a in enumerate(accounts)),
    ]


def moves(first: int, *transfers: Move) -> Tx:
    """A transaction of transfers only, its events numbered from `first`."""
    return [
        kind(**head(first + i, first), src=src, dst=dst, amount=amount)
        for i, (kind, src, dst, amount) in enumerate(transfers)
    ]


def auction(first: int, step: int, winner: str, seller: str, reward: int) -> Tx:
    """One Vickrey auction step: two bids, allocation, pay, mint after the first sale, reward."""
    loser, price = (BOB if winner == ALICE else ALICE), 5 + step
    h = iter(head(first + i, first, step) for i in range(7))
    tx: Tx = [
        Bid(**next(h), account=winner, primitive=0, state=step, amount=price + 3),
        Bid(**next(h), account=loser, primitive=1, state=step, amount=price),
        Allocate(**next(h), account=winner, primitive=0, state=step, amount=price + 3),
        Pay(**next(h), src=winner, dst=seller, amount=price),
    ]
    if step > 0:
        tx.append(Mint(**next(h), src="auctioneer", dst=seller, amount=3))
    tx.append(Transform(**next(h), account=winner, primitive=0, state=step,
                        next_state=step + 1, duration=1.0, done=step == 2))  # fmt: skip
    src, dst = (ENVIRONMENT, winner) if reward >= 0 else (winner, ENVIRONMENT)
    tx.append(Reward(**next(h), src=src, dst=dst, amount=abs(reward)))
    return tx


def control_step(first: int, step: int, controls: tuple[float, float]) -> Tx:
    """One control-variant step: both agents' orders, the system's transition, their rewards
    (a penalty for each: its distance from its target plus its effort)."""
    h = iter(head(first + i, first, step) for i in range(6))
    x, nxt = [0.1 * step, 0.0], [0.1 * (step + 1), sum(controls)]
    tx: Tx = []
    if step == 0:  # the episode opens in its first step's transaction, as a control run's
        tx.append(EpisodeStart(**next(h), task="integrator", mechanism=CONTROL, cloned=False,
                               gamma=0.99, state=0))  # fmt: skip
    tx += [
        Order(**next(h), account=a, primitive=i, action=int(c > 0), control=c)
        for i, (a, c) in enumerate(zip((ALICE, BOB), controls, strict=True))
    ]
    tx.append(Transition(**next(h), account=SYSTEM, x=x, controls=list(controls), next_x=nxt,
                         done=False))  # fmt: skip
    tx += [
        Reward(**next(h), src=a, dst=ENVIRONMENT, amount=10 + i) for i, a in enumerate((ALICE, BOB))
    ]
    return tx


def control_history() -> list[Tx]:
    """A small control-variant run: opening, two control steps, nothing else."""
    txs = [opening(0)]
    txs.append(control_step(next_seq(txs), 0, (0.5, -0.5)))
    txs.append(control_step(next_seq(txs), 1, (1.0, 0.0)))
    return txs


def history() -> list[Tx]:
    """A small audit-clean run: opening, one Vickrey episode of three auctions, closing."""
    txs = [opening(0)]
    txs.append([EpisodeStart(**head(next_seq(txs), next_seq(txs)), task="chain",
                             mechanism="v", cloned=True, gamma=0.5, state=0)])  # fmt: skip
    seller = ENVIRONMENT
    for step, (winner, reward) in enumerate(((ALICE, 10), (BOB, -4), (ALICE, 30))):
        txs.append(auction(next_seq(txs), step, winner, seller, reward))
        seller = winner
    txs.append([EpisodeEnd(**head(next_seq(txs), next_seq(txs), 2), steps=3, episode_return=36)])
    h = head(next_seq(txs), next_seq(txs), step=-1)
    balances = fold(txs)
    txs.append([
        RunEnd(**h, episodes=1),
        *(Balance(**{**h, "seq": h["seq"] + 1 + i}, account=a, amount=balances.get(a, 0))
          for i, a in enumerate(ACCOUNTS)),
    ])  # fmt: skip
    return txs


CAROL = "carol"
LIFE_ACCOUNTS: tuple[str, ...] = (*ACCOUNTS, TREASURY)


def capped_auction(first: int, step: int, bids: dict[str, tuple[int, int]], seller: str,
                   reward: int, done: bool) -> Tx:  # fmt: skip
    """One CCV auction among `bids` ({bidder: (bid, cap)}, in bidder order, no ties): the
    highest wins and pays the second-highest to `seller`, then gets `reward`."""
    order = sorted(bids, key=lambda a: bids[a][0], reverse=True)
    winner, price = order[0], bids[order[1]][0]
    h = iter(head(first + i, first, step) for i in range(len(bids) + 4))
    tx: Tx = [
        Bid(**next(h), account=a, primitive=i, state=step, amount=b, cap=cap)
        for i, (a, (b, cap)) in enumerate(bids.items())
    ]
    tx.append(Allocate(**next(h), account=winner, primitive=list(bids).index(winner),
                       state=step, amount=bids[winner][0]))  # fmt: skip
    tx.append(Pay(**next(h), src=winner, dst=seller, amount=price))
    tx.append(Transform(**next(h), account=winner, primitive=list(bids).index(winner),
                        state=step, next_state=step + 1, duration=1.0, done=done))  # fmt: skip
    src, dst = (ENVIRONMENT, winner) if reward >= 0 else (winner, ENVIRONMENT)
    tx.append(Reward(**next(h), src=src, dst=dst, amount=abs(reward)))
    return tx


def lifecycle_history() -> list[Tx]:
    """A small audit-clean economy: founders endowed by the environment, capped bids, rent,
    the birth of a child endowed by its parent, the child's dividend to its parent, a
    bankruptcy (liquidate, then close)."""
    founding = opening(0, LIFE_ACCOUNTS)
    founding += [
        Endow(**head(len(founding) + i, 0, step=-1), src=ENVIRONMENT, dst=a, amount=100)
        for i, a in enumerate((ALICE, BOB))
    ]
    txs = [founding]
    txs.append([EpisodeStart(**head(next_seq(txs), next_seq(txs)), task="chain",
                             mechanism="ccv", cloned=False, gamma=0.5, state=0)])  # fmt: skip
    step0 = capped_auction(next_seq(txs), 0, {ALICE: (30, 100), BOB: (20, 100)}, ENVIRONMENT,
                           10, done=False)  # fmt: skip
    txs.append([*step0, Rent(**head(next_seq(txs) + len(step0), next_seq(txs)), src=ALICE,
                             dst=TREASURY, amount=1)])  # fmt: skip
    n = next_seq(txs)
    txs.append([
        Open(**head(n, n, step=-1), account=CAROL),
        Endow(**head(n + 1, n, step=-1), src=ALICE, dst=CAROL, amount=25),
    ])  # fmt: skip
    bids = {ALICE: (5, 64), BOB: (8, 100), CAROL: (3, 25)}
    txs.append(capped_auction(next_seq(txs), 1, bids, ALICE, -4, done=True))
    txs.append([EpisodeEnd(**head(next_seq(txs), next_seq(txs), 1), steps=2, episode_return=6)])
    n = next_seq(txs)
    txs.append(moves(n, (Rent, BOB, TREASURY, 2), (Rent, CAROL, TREASURY, 1)))
    txs.append(moves(next_seq(txs), (Dividend, CAROL, ALICE, 2)))
    n = next_seq(txs)
    txs.append([
        Liquidate(**head(n, n, step=-1), src=BOB, dst=TREASURY, amount=fold(txs)[BOB]),
        Close(**head(n + 1, n, step=-1), account=BOB, reason="bankrupt"),
    ])  # fmt: skip
    n = next_seq(txs)
    balances = fold(txs)
    closing = head(n, n, step=-1)
    txs.append([
        RunEnd(**closing, episodes=1),
        *(Balance(**{**closing, "seq": n + 1 + i}, account=a, amount=balances.get(a, 0))
          for i, a in enumerate(sorted((*LIFE_ACCOUNTS, CAROL)))),
    ])  # fmt: skip
    return txs


def fold(txs: Sequence[Tx]) -> dict[str, int]:
    """Balances by hand: every transfer moves its amount from `src` to `dst`."""
    out: dict[str, int] = {}
    for e in (e for tx in txs for e in tx if isinstance(e, Transfer)):
        out[e.src] = out.get(e.src, 0) - e.amount
        out[e.dst] = out.get(e.dst, 0) + e.amount
    return out


def next_seq(txs: Sequence[Tx]) -> int:
    """The sequence number that follows `txs`."""
    return sum(len(tx) for tx in txs)


def append_all(ledger: Ledger, txs: Sequence[Tx]) -> None:
    """Append every transaction of `txs`, then commit them."""
    for tx in txs:
        ledger.append(tx)
    ledger.flush()


def committed(ledger: Ledger) -> list[EventBase]:
    """Everything the ledger has committed, after committing what is staged."""
    ledger.flush()
    return list(ledger.events())


@pytest.fixture(params=["memory", "disk"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """An empty ledger of every backend (disk with small batches)."""
    ledger: Ledger
    if request.param == "memory":
        ledger = MemoryLedger()
    else:
        ledger = DiskLedger(tmp_path / "ledger", batch_events=SMALL_BATCH)
    yield ledger
    ledger.close()


@pytest.fixture
def opened(backend: Ledger) -> Ledger:
    """A ledger of every backend holding only the opening transaction."""
    append_all(backend, [opening(0)])
    return backend


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit 50 events at a time: each ledger a test audits spans many chunks, so the test's
    expected verdict (the first violation's seq and text) also checks the state the audit
    carries from one chunk to the next."""
    import market.audit

    monkeypatch.setattr(market.audit, "CHUNK_EVENTS", 50)


@pytest.fixture(autouse=True)
def full_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees the budgets it asks for, whatever the shell exports
    (`MARKET_BUDGET_SCALE` is set by the tests that want it)."""
    from agents.budget import BUDGET_SCALE

    monkeypatch.delenv(BUDGET_SCALE, raising=False)
