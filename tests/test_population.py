"""The population analysis on a hand-made economy (tests/conftest.py's lifecycle_history):
founders, a birth endowed by its parent, a bankruptcy."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import ALICE, BOB, CAROL, append_all, fold, lifecycle_history

from analyses.inequality import gini, gini_over_time, inequality
from analyses.population import lifecycle, living_inequality, population
from analyses.report import population_figure, population_series, run_report
from analyses.wealth import steps_before, wealth_over_time
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
    """After each transaction that opens or closes members: the 2 founders (opened together,
    so the first point is the founders' count, not 1), 3 with the child, 2 after the
    bankruptcy."""
    table = population(_ledger().scan())
    assert table["alive"].to_list() == [2, 3, 2]
    assert table["births"].to_list() == [0, 1, 1]
    assert table["deaths"].to_list() == [0, 0, 1]
    assert table["seq"].is_sorted()


def test_the_treasury_is_not_an_agent_of_the_wealth_distribution() -> None:
    """Inequality is over the members: the treasury's receipts are not a member's wealth."""
    txs = lifecycle_history()
    members = {a: b for a, b in fold(txs).items() if a in (ALICE, BOB, CAROL)}
    row = inequality(_ledger().scan()).row(0, named=True)
    assert row["members"] == "all accounts ever opened"
    assert row["agents"] == 3  # alice, bob (closed, at 0) and carol; not the treasury
    assert row["total_credit"] * UNIT == pytest.approx(sum(members.values()))


def test_the_report_of_an_economy_plots_its_population(tmp_path: Path) -> None:
    """A ledger with births and deaths gets a population table and a plot with its series:
    the population after each change, by env steps, held to the run's end."""
    ledger = DiskLedger(tmp_path / "run" / "ledger")
    append_all(ledger, lifecycle_history())
    report = run_report(tmp_path / "run")
    png = report.plots["population"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = pl.read_parquet(png.with_suffix(".parquet"))
    changes = population(ledger.scan())
    assert series.head(changes.height).drop("env_steps").equals(changes)
    assert series["alive"].to_list() == [2, 3, 2, 2] and series["seq"][-1] == ledger.next_seq - 1
    assert report.tables["population (final)"]["alive"].to_list() == [2]


def test_population_plots_count_env_steps() -> None:
    """The population series is drawn against env steps (auctions) taken before each change:
    none before the founding, one before carol's birth, two before bob's death."""
    events = _ledger().scan()
    series = population_series(events, population(events), wealth_over_time(events, 10))
    assert series["env_steps"].to_list() == [0, 1, 2, 2]
    figure = population_figure(series, ("env_steps", "env steps (auctions)"))
    ax = figure.axes[0]
    assert ax.get_xlabel() == "env steps (auctions)"
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2, 2]
    assert ax.lines[0].get_ydata()[0] == 2  # the founders, not the first of them alone


def test_steps_before_counts_the_auctions_before_each_seq() -> None:
    """steps_before agrees with counting the allocations by hand, on every seq."""
    ledger = _ledger()
    allocations = [e.seq for e in ledger.events() if e.kind == "allocate"]
    seqs = pl.Series(range(ledger.next_seq), dtype=pl.Int64)
    counted = steps_before(ledger.scan(), seqs).to_list()
    assert counted == [sum(a < s for a in allocations) for s in seqs]
    with pytest.raises(ValueError):
        steps_before(ledger.scan(), pl.Series([3, 1]))


def test_inequality_shows_all_accounts_ever_opened_and_the_living() -> None:
    """Two labelled rows: every member account ever opened (bob, closed, at 0) and the living
    members (alice and carol)."""
    held = {a: b / UNIT for a, b in fold(lifecycle_history()).items()}
    table = inequality(_ledger().scan())
    assert table["members"].to_list() == ["all accounts ever opened", "living members"]
    everyone, living = table.rows(named=True)
    assert everyone["agents"] == 3 and living["agents"] == 2
    assert everyone["gini"] == pytest.approx(gini([held[ALICE], 0.0, held[CAROL]]))
    assert living["gini"] == pytest.approx(gini([held[ALICE], held[CAROL]]))
    assert living["gini"] != pytest.approx(everyone["gini"])
    assert living["total_credit"] == pytest.approx(everyone["total_credit"])


def test_the_gini_over_time_counts_only_the_accounts_opened_by_then() -> None:
    """At every checkpoint the Gini is over the members opened by then (a closed one at 0),
    and the living members' Gini over those not closed: carol does not count before her
    birth, nor at all in either before it."""
    ledger = _ledger()
    events = ledger.scan()
    table = wealth_over_time(events, points=ledger.next_seq)  # one checkpoint per event
    birth = lifecycle(events).filter(pl.col("account") == CAROL)["seq"][0]
    assert table.filter(pl.col("account") == CAROL)["seq"].min() == birth
    ginis = gini_over_time(table)
    lives = lifecycle(events)
    for seq, accounts, g, alive, g_living in ginis.select(
        "seq", "accounts", "gini", "alive", "gini_living"
    ).iter_rows():
        opened = lives.filter((pl.col("change") == 1) & (pl.col("seq") <= seq))["account"]
        closed = lives.filter((pl.col("change") == -1) & (pl.col("seq") <= seq))["account"]
        held = wealth_before(seq + 1)
        credit = {a: held.get(a, 0) / UNIT for a in opened}
        assert accounts == len(credit) and g == pytest.approx(gini(list(credit.values())))
        living = [c for a, c in credit.items() if a not in set(closed)]
        assert alive == len(living) and g_living == pytest.approx(gini(living))
    assert ginis["accounts"].to_list()[-1] == 3 and ginis["alive"].to_list()[-1] == 2


def test_the_report_of_an_economy_labels_both_ginis(tmp_path: Path) -> None:
    """The final table, the Lorenz curves and the Gini over time each show the Gini of all
    accounts ever opened and of the living members, labelled."""
    ledger = DiskLedger(tmp_path / "run" / "ledger")
    append_all(ledger, lifecycle_history())
    report = run_report(tmp_path / "run")
    table = inequality(ledger.scan())
    shown = report.tables["inequality (final)"]
    assert shown.columns == ["measure", "all accounts ever opened", "living members"]
    assert shown.row(3) == ("gini", *table["gini"])
    assert shown.row(0) == ("agents", 3.0, 2.0)
    lorenz = pl.read_parquet(report.plots["Lorenz curve"].with_suffix(".parquet"))
    counts = dict(lorenz.group_by("members").len().iter_rows())
    assert counts == {"all accounts ever opened": 4, "living members": 3}  # n agents + (0, 0)
    ginis = pl.read_parquet(report.plots["Gini over time"].with_suffix(".parquet"))
    final = table.select("members", "gini").rows()
    assert [ginis["gini"][-1], ginis["gini_living"][-1]] == pytest.approx([g for _, g in final])
    living = pl.read_parquet(report.plots["the living members' wealth"].with_suffix(".parquet"))
    assert living["gini"][-1] == pytest.approx(final[1][1])
    assert living["gini (all accounts ever opened)"][-1] == pytest.approx(final[0][1])


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
