"""Rules written twice, and what one copy would cost: the transaction form against the batch form.

Two rules have one implementation per form of a committed step: the ledger's checks
(`ledger.transaction.check` for a transaction, `ledger.batch.check_batch` for a batch) and the
auction payoff fold (`ledger.payoffs.PayoffTracker`, `ledger.payoff_columns.BatchPayoffTracker`).
The episode kernel writes transactions; the array kernels write batches. Keeping one copy
means running every transaction through the batch form. This times, per auction transaction
of a Chain run (cloned CCV society, random bidders, one episode at a time):
  own form        the transaction's own code
  batch form      the batch code on the one-transaction batch, made beforehand
  making          making that batch (`of_transactions`)
beside the episode kernel's whole cost per auction (`simulate` on a memory ledger, no
subscribers), so the table shows what one copy would do to every step, even were the batch
made for free. A second table puts the episode kernel beside the round kernel run with one
slot: the cost of making the episode kernel the array path's one-slot case.

    python benchmarks/twins.py [--episodes 500] [--repeats 3]

Saves the measurements under docs/results/data/twins/ and writes the table from them
(docs/results.md). Parity tests hold the twins to each other (tests/test_batch.py,
tests/test_payoff_columns.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import polars as pl
from generated import RESULTS, Table, frame, publish, read, save_data

from agents.fixed import RandomBidder
from ledger.batch import check_batch, of_transactions
from ledger.events import Bid
from ledger.payoff_columns import BatchPayoffTracker
from ledger.payoffs import PayoffTracker
from ledger.store import MemoryLedger
from ledger.transaction import Transaction, check
from market.bus import Bus
from market.run import KernelChoice, RunConfig, simulate
from market.society import Society
from market.tasks import make_task

RULES = {"check": "the ledger's checks", "payoffs": "the payoff fold"}
T = TypeVar("T")


def auctions(episodes: int) -> tuple[list[Transaction], frozenset[str]]:
    """A run's auction transactions and its accounts."""
    seen: list[Transaction] = []
    ledger = MemoryLedger()
    bus = Bus(ledger)
    bus.subscribe_all(seen.append)
    simulate(run_config(episodes), ledger, bidders(), bus=bus, kernel="episodes")
    found = [tx for tx in seen if any(m is Bid for m, _ in tx.body)]
    return found, frozenset(ledger.accounts)


def run_config(episodes: int) -> RunConfig:
    """The measured run: Chain, cloned CCV, random bidders, one episode at a time."""
    return RunConfig(task="chain", bidder="random", episodes=episodes)


def bidders() -> RandomBidder:
    """The run's random bidders, from a fixed seed."""
    return RandomBidder(len(Society.of(make_task("chain")).accounts), np.random.default_rng(0))


def kernel_step(episodes: int, kernel: KernelChoice) -> float:
    """Seconds per auction of the run on `kernel` (a memory ledger, no subscribers)."""
    start = time.perf_counter()
    summary = simulate(run_config(episodes), MemoryLedger(), bidders(), kernel=kernel)
    return (time.perf_counter() - start) / summary.steps


def per_item(items: list[T], apply: Callable[[T], object]) -> float:
    """Seconds per item of `apply` over `items`."""
    start = time.perf_counter()
    for item in items:
        apply(item)
    return (time.perf_counter() - start) / len(items)


def measure(episodes: int) -> list[dict[str, object]]:
    """Microseconds per auction transaction: each rule in its own form and in the batch form
    (on batches made beforehand), making the batches, and the kernel's whole step."""
    txs, accounts = auctions(episodes)
    batches = [of_transactions([tx]) for tx in txs]
    payoffs = PayoffTracker(0.99, lambda samples: None)
    batch_payoffs = BatchPayoffTracker(0.99, lambda samples: None)
    timed = {
        ("check", "own"): per_item(txs, lambda tx: check(tx, tx.first_seq, accounts)),
        ("check", "batch"): per_item(batches, lambda b: check_batch(b, b.first_seq, accounts)),
        ("payoffs", "own"): per_item(txs, payoffs.apply),
        ("payoffs", "batch"): per_item(batches, batch_payoffs.apply_batch),
        ("making", "batch"): per_item(txs, lambda tx: of_transactions([tx])),
        ("kernel", "own"): kernel_step(episodes, "episodes"),
        ("kernel", "batch"): kernel_step(episodes, "rounds"),
    }
    return [{"rule": rule, "form": form, "us": 1e6 * s} for (rule, form), s in timed.items()]


def tables(data: Path) -> list[Table]:
    """Per rule, the medians over repeats of its microseconds per auction in each form, and
    the episode kernel's cost per auction were the batch form the only one (even with the
    batch made for free); then both kernels' cost per auction one episode at a time."""
    med = (
        read(data, "times").group_by("rule", "form", maintain_order=True).agg(pl.col("us").median())
    )
    us = {(r, f): v for r, f, v in med.iter_rows()}
    kernel, making = us[("kernel", "own")], us[("making", "batch")]
    rows = []
    for rule, words in RULES.items():
        own, batch = us[(rule, "own")], us[(rule, "batch")]
        rows.append(
            {
                "rule": words,
                "own form (us per auction)": f"{own:,.1f}",
                "batch form (us per auction)": f"{batch:,.1f}",
                "making the batch (us)": f"{making:,.0f}",
                "episode kernel (us per auction)": f"{kernel:,.1f}",
                "batch form only: the kernel's cost x": f"{(kernel - own + batch) / kernel:,.1f}",
            }
        )
    steps = [
        {
            "kernel, one episode at a time": words,
            "us per auction": f"{us[('kernel', form)]:,.1f}",
            "x the episode kernel": f"{us[('kernel', form)] / kernel:,.1f}",
        }
        for form, words in (("own", "the episode kernel"), ("batch", "the round kernel, one slot"))
    ]
    return [Table(data.name, frame(rows)), Table(f"{data.name}-kernel", frame(steps))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="saved measurements and tables go here"
    )
    args = parser.parse_args()
    rows = [{"repeat": k, **row} for k in range(args.repeats) for row in measure(args.episodes)]
    data = save_data(args.results, "twins", "twins", {"times": pl.DataFrame(rows)})
    publish(data, args.results)


if __name__ == "__main__":
    main()
