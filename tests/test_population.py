"""The population analysis on a hand-made economy (tests/conftest.py's lifecycle_history):
founders, a birth endowed by its parent, a bankruptcy."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import ALICE, BOB, CAROL, append_all, fold, lifecycle_history

from analyses.inequality import gini, inequality
from analyses.population import lifecycle, living_inequality, population
from analyses.report import run_report
from ledger.disk import DiskLedger
from ledger.events import Transfer
from ledger.store import MemoryLedger
from ledger.units import UNIT


def _ledger() -> MemoryLedger:
    ledger = MemoryLedger()
    append_all(ledger, lifecycle_history())
    return ledger


def test_lifecycle_tells_founders_births_and_deaths_apart() -> None:
    """Founders are endowed by the environment, a child by its parent; a close is a death
    with its reason; the market's own accounts are not members."""
    rows = lifecycle(_ledger().scan()).select("account", "change", "event", "parent", "reason")
    assert rows.rows() == [
        (ALICE, 1, "founded", None, None),
        (BOB, 1, "founded", None, None),
        (CAROL, 1, "born", ALICE, None),
        (BOB, -1, "died", None, "bankrupt"),
    ]


def test_population_counts_the_living_births_and_deaths() -> None:
    """After each open or close: 1, 2 founders, 3 with the child, 2 after the bankruptcy."""
    table = population(_ledger().scan())
    assert table["alive"].to_list() == [1, 2, 3, 2]
    assert table["births"].to_list() == [0, 0, 1, 1]
    assert table["deaths"].to_list() == [0, 0, 0, 1]
    assert table["seq"].is_sorted()


def test_the_treasury_is_not_an_agent_of_the_wealth_distribution() -> None:
    """Inequality is over the members: the treasury's receipts are not a member's wealth."""
    txs = lifecycle_history()
    members = {a: b for a, b in fold(txs).items() if a in (ALICE, BOB, CAROL)}
    row = inequality(_ledger().scan()).row(0, named=True)
    assert row["agents"] == 3  # alice, bob (closed, at 0) and carol; not the treasury
    assert row["total_credit"] * UNIT == pytest.approx(sum(members.values()))


def test_the_report_of_an_economy_plots_its_population(tmp_path: Path) -> None:
    """A ledger with births and deaths gets a population table and a plot with its series."""
    ledger = DiskLedger(tmp_path / "run" / "ledger")
    append_all(ledger, lifecycle_history())
    report = run_report(tmp_path / "run")
    png = report.plots["population"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_parquet(png.with_suffix(".parquet")).equals(population(ledger.scan()))
    assert report.tables["population (final)"]["alive"].to_list() == [2]


def test_living_inequality_leaves_out_the_dead_and_the_unborn() -> None:
    """At every checkpoint, the Gini and the richest's share are over the members alive
    then: bob's 0 after his close does not count, nor carol before her birth."""
    ledger = _ledger()
    events = ledger.scan()
    table = living_inequality(events, points=ledger.next_seq)  # one checkpoint per event
    lives = lifecycle(events)
    for seq, alive, total, g, top in table.select(
        "seq", "alive", "total_credit", "gini", "top1_share"
    ).iter_rows():
        members = [
            a
            for a in (ALICE, BOB, CAROL)
            if lives.filter((pl.col("account") == a) & (pl.col("change") == 1))["seq"][0] <= seq
            and not lives.filter(
                (pl.col("account") == a) & (pl.col("change") == -1) & (pl.col("seq") <= seq)
            ).height
        ]
        held = wealth_before(seq + 1)
        credit = [held.get(a, 0) / UNIT for a in members]
        assert alive == len(members)
        assert total == pytest.approx(sum(credit))
        assert g == pytest.approx(gini(credit))
        assert top == (None if sum(credit) <= 0 else pytest.approx(max(credit) / sum(credit)))
    assert table["alive"].to_list()[-1] == 2 and 3 in table["alive"].to_list()


def wealth_before(seq: int) -> dict[str, int]:
    """Every account's balance after the events numbered below `seq`."""
    held: dict[str, int] = {}
    for e in _ledger().events():
        if e.seq >= seq:
            break
        if isinstance(e, Transfer):
            held[e.src] = held.get(e.src, 0) - e.amount
            held[e.dst] = held.get(e.dst, 0) + e.amount
    return held
