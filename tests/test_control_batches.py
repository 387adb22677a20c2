"""The control variant's columnar path: vector columns in batches, and per-account delivery.

Contract: a control run published as batches (one per instant) stores exactly the bytes its
transactions store when appended one by one, and an account's batch subscriber receives
exactly the rows addressed to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.fixed_control import RandomPolicy
from ledger.batch import CODE, EventBatch, check_batch, of_transactions
from ledger.disk import MANIFEST, DiskLedger
from ledger.errors import InvalidEvent
from ledger.events import ENVIRONMENT, SYSTEM, EventBase, Order, Reward, Transition, accounts_of
from ledger.schema import to_table
from ledger.store import MemoryLedger
from ledger.transaction import Transaction
from market.bus import Bus
from market.control import ControlRunConfig, simulate_control
from market.control_tasks import make_control_task

CONFIG = ControlRunConfig(task="pendulum", agents=3, policy="random", episodes=5, concurrency=2)


def published(ledger: DiskLedger | MemoryLedger) -> list[Transaction | EventBatch]:
    """Run CONFIG with random controls into `ledger`; what the kernel published, in order."""
    items: list[Transaction | EventBatch] = []
    bus = Bus(ledger)
    bus.subscribe_all(items.append, batches=items.append)
    task = make_control_task(CONFIG.task, CONFIG.agents)
    policy = RandomPolicy(len(task.controls), CONFIG.agents, np.random.default_rng(1))
    simulate_control(CONFIG, ledger, policy, bus=bus)
    return items


def stored(path: Path) -> dict[str, bytes]:
    """Every segment file and the manifest of a disk ledger directory, by name."""
    return {
        p.name: p.read_bytes()
        for p in sorted(path.iterdir())
        if p.name == MANIFEST or p.name.startswith("seg-")
    }


@pytest.mark.parametrize("batch_events", [7, 100, 65_536])
def test_control_batches_store_the_bytes_of_their_transactions(
    tmp_path: Path, batch_events: int
) -> None:
    """The same run, appended as batches or transaction by transaction: identical files."""
    batched = DiskLedger(tmp_path / "batched", batch_events=batch_events)
    items = published(batched)
    batched.close()
    assert any(isinstance(i, EventBatch) and "x" in i.vectors for i in items)
    single = DiskLedger(tmp_path / "single", batch_events=batch_events)
    for item in items:
        for tx in item.transactions() if isinstance(item, EventBatch) else [item]:
            single.append(tx)
    single.close()
    assert stored(tmp_path / "batched") == stored(tmp_path / "single")
    assert batched.head == single.head


def test_vector_columns_round_trip_through_transactions() -> None:
    """batch -> transactions -> batch keeps every vector; the table equals the pylist one."""
    batches = [i for i in published(MemoryLedger()) if isinstance(i, EventBatch)]
    batch = batches[len(batches) // 2]
    txs = batch.transactions()
    again = of_transactions(txs)
    for name in ("x", "controls", "next_x"):
        moves = batch.kind == CODE[Transition]
        assert np.array_equal(again.vectors[name][moves], batch.vectors[name][moves])
    assert batch.to_table().equals(to_table(txs))
    moves = [e for tx in txs for e in tx.events() if isinstance(e, Transition)]
    assert len(moves[0].controls) == CONFIG.agents and len(moves[0].x) == 2


def test_a_batch_with_a_transition_but_no_vectors_is_rejected() -> None:
    """check_batch names the missing vector instead of storing a null state."""
    ledger = MemoryLedger()
    batch = next(i for i in published(ledger) if isinstance(i, EventBatch))
    bare = EventBatch(batch.kind, batch.columns, batch.strings, {})
    with pytest.raises(InvalidEvent, match="without its"):
        check_batch(bare, batch.first_seq, ledger.accounts)


def test_an_accounts_batch_subscriber_gets_exactly_its_rows() -> None:
    """Per account: the batch handler's rows are the events addressed to it, in order, and
    an event handler on the same account still gets them one by one."""
    ledger = MemoryLedger()
    bus = Bus(ledger)
    rows: dict[str, list[EventBatch]] = {a: [] for a in (*CONFIG.accounts, SYSTEM)}
    events: list[EventBase] = []
    for account, got in rows.items():
        bus.subscribe(account, batches=got.append)
    bus.subscribe("agent1", events.append)
    task = make_control_task(CONFIG.task, CONFIG.agents)
    policy = RandomPolicy(len(task.controls), CONFIG.agents, np.random.default_rng(1))
    simulate_control(CONFIG, ledger, policy, bus=bus)
    everything = list(ledger.events())
    for account, got in rows.items():
        seen = [e for b in got for e in b.events()]
        mine = [e for e in everything if account in accounts_of(e)]
        assert [e.seq for e in seen] == [e.seq for e in mine]
    agent1 = [e for e in everything if "agent1" in accounts_of(e)]
    assert [e.seq for e in events] == [e.seq for e in agent1]
    kinds = {type(e) for b in rows["agent0"] for e in b.events()}
    assert kinds >= {Order, Reward} and Transition not in kinds
    public = {type(e) for b in rows[SYSTEM] for e in b.events()}
    assert Transition in public and not public & {Order, Reward}
    assert ENVIRONMENT not in rows
