"""`market report`: tables, PNG plots with their series, and one self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import ALICE, BOB, Tx, append_all, head, history, next_seq, opening
from typer.testing import CliRunner

from analyses.inequality import ALL_OPENED, LIVING
from analyses.report import run_report
from analyses.wealth import wealth_over_time
from cli import app
from ledger.disk import DiskLedger
from ledger.events import (
    CONTROL,
    ENVIRONMENT,
    SYSTEM,
    EpisodeEnd,
    EpisodeStart,
    Order,
    Reward,
    Transition,
)
from simulation import rundir


def simulate(tmp_path: Path, *args: str) -> Path:
    """A finished run made through the CLI, in tmp_path/run."""
    run = tmp_path / "run"
    made = CliRunner().invoke(app, ["simulate", *args, "--out", str(run)])
    assert made.exit_code == 0, made.output
    return run


def hand_made_run(tmp_path: Path, txs: list[Tx], config: dict[str, Any]) -> Path:
    """A run directory holding the hand-made ledger `txs` and `config` as its config.json."""
    run = tmp_path / "run"
    ledger = DiskLedger(run / rundir.LEDGER)
    append_all(ledger, txs)
    ledger.close()
    (run / rundir.CONFIG).write_text(json.dumps(config), encoding="utf-8")
    return run


def rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows of a Parquet file."""
    return pl.read_parquet(path).rows()


N = 1e-9
"""One unit in credit: conftest's amounts are units."""


def test_an_auction_runs_report_holds_its_tables_plots_and_series(tmp_path: Path) -> None:
    """The report of conftest's hand-made Vickrey episode (three auctions on Chain, worked
    through in tests/test_analyses.py), against figures worked out by hand. Its 32 events
    in 4 checkpoints of 8 (seq 7, 15, 23, 31): auctions are allocated at seq 8, 14 and 21;
    alice's balance is 0, then -5 + 10 + 6 = 11, then + 3 - 7 = 7, then + 30 = 37 units."""
    run = hand_made_run(tmp_path, history(), {"task": "chain", "mechanism": "v",
                                              "bidder": "hand", "gamma": 0.5})  # fmt: skip
    result = CliRunner().invoke(app, ["report", str(run), "--points", "4"])
    assert result.exit_code == 0, result.output
    out = run / "report"
    for name in ("wealth", "lorenz", "gini", "returns", "bids"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = [(7, 1.5, 0), (15, 3.0, 2), (23, 4.75, 3), (31, 6.75, 3)]  # seq, time, steps
    balances = {"alice": [0, 11, 7, 37], "auctioneer": [0, 0, -6, -6], "bob": [0, -6, 0, 0],
                "environment": [0, -5, -1, -31]}  # fmt: skip
    assert rows(out / "wealth.parquet") == [
        (account, seq, time, steps, units, pytest.approx(units * N), False)
        for account, held in balances.items()
        for (seq, time, steps), units in zip(checkpoints, held, strict=True)
    ]
    lorenz = [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (1.0, pytest.approx(37 * N), 1.0)]  # bob, alice
    assert rows(out / "lorenz.parquet") == [(m, *p) for m in (ALL_OPENED, LIVING) for p in lorenz]
    # Gini of two agents a, b: 2|a - b| / (2 * 2 * (|a| + |b|)): 0 for 0, 0; 0.5 for 11, -6 too.
    assert [(r[0], r[4], r[6]) for r in rows(out / "gini.parquet")] == [
        (7, 0.0, 0.0), (15, 0.5, 0.5), (23, 0.5, 0.5), (31, 0.5, 0.5)
    ]  # fmt: skip
    assert rows(out / "returns.parquet") == [(0, 1, *[pytest.approx(36 * N)] * 3)]
    # Chain's Q* at gamma 0.5: R is worth 0.8 * 0.5^(4 - s); L from s is worth half of R from
    # max(s - 1, 0). The winner (L) bid the price + 3, the loser (R) the price: 5, 6, 7.
    q = {(0, 0): 0.025, (0, 1): 0.05, (1, 0): 0.025, (1, 1): 0.1, (2, 0): 0.05, (2, 1): 0.2}
    bid = {(0, 0): 8, (0, 1): 5, (1, 0): 9, (1, 1): 6, (2, 0): 10, (2, 1): 7}
    assert rows(out / "bids.parquet") == [
        (s, p, "LR"[p], pytest.approx(bid[s, p] * N), 1, pytest.approx(q[s, p]),
         pytest.approx(bid[s, p] * N - q[s, p]))
        for s, p in sorted(q)
    ]  # fmt: skip
    report = run_report(run, 4)
    assert report.tables["winners (last 10% of episodes)"].rows() == [
        (s, 0, "L", 1, 1.0) for s in range(3)
    ]
    assert report.tables["income (credit)"].rows() == [
        (a, *(pytest.approx(v * N) for v in values))
        for a, values in (("alice", (40, 6, 12, 3, 37)), ("auctioneer", (0, 0, 0, -6, -6)),
                          ("bob", (-4, 7, 6, 3, 0)), ("environment", (-36, 5, 0, 0, -31)))
    ]  # fmt: skip
    inequality = dict(report.tables["inequality (final)"].select("measure", LIVING).rows())
    assert inequality == {"agents": 2.0, "total_credit": pytest.approx(37 * N),
                          "mean_credit": pytest.approx(18.5 * N), "gini": 0.5,
                          "top1_share": 1.0, "in_debt": 0.0}  # fmt: skip
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    for account, units in (("alice", 37), ("auctioneer", -6), ("bob", 0), ("environment", -31)):
        assert f"<td>{account}</td><td>{units * N:.6g}</td>" in page
    assert "wealth (final)" in result.output and "bids against Q*" in result.output


def control_step(
    txs: list[Tx],
    episode: int,
    step: int,
    controls: list[float],
    next_x: list[float],
    paid: tuple[int, ...] = (),
    done: bool = False,
) -> None:
    """Append one step of alice and bob on the integrator: its EpisodeStart at step 0, their
    orders at `controls`, the transition to `next_x` (`done` at an episode's last step), and
    each agent's reward in `paid` (units; negative: a penalty paid to the environment)."""
    first = next_seq(txs)
    h = iter({**head(first + i, first, step), "episode": episode} for i in range(7))
    tx: Tx = []
    if step == 0:
        tx.append(EpisodeStart(**next(h), task="integrator", mechanism=CONTROL, cloned=False,
                               gamma=0.99, state=0))  # fmt: skip
    pairs = enumerate(zip((ALICE, BOB), controls, strict=True))
    tx += [Order(**next(h), account=a, primitive=i, action=1, control=c) for i, (a, c) in pairs]
    tx.append(Transition(**next(h), account=SYSTEM, x=[0.0, 0.0], controls=controls,
                         next_x=next_x, done=done))  # fmt: skip
    for agent, r in zip((ALICE, BOB), paid, strict=False):
        src, dst = (ENVIRONMENT, agent) if r > 0 else (agent, ENVIRONMENT)
        tx.append(Reward(**next(h), src=src, dst=dst, amount=abs(r)))
    txs.append(tx)


def episode_end(txs: list[Tx], episode: int, steps: int, episode_return: int) -> None:
    """Append the EpisodeEnd of `episode` after its `steps` steps."""
    first = next_seq(txs)
    end = {**head(first, first, steps - 1), "episode": episode}
    txs.append([EpisodeEnd(**end, steps=steps, episode_return=episode_return)])


def control_run() -> list[Tx]:
    """Two episodes of two steps of alice and bob. Episode 0: each step alice pays a penalty
    of 10 units and bob of 11; episode 1: the environment pays alice 5, bob pays 1."""
    txs = [opening(0)]
    for episode, paid in enumerate(((-10, -11), (5, -1))):
        for step in range(2):
            control_step(txs, episode, step, [0.0, 0.0], [0.0, 0.0], paid, done=step == 1)
        episode_end(txs, episode, 2, 2 * sum(paid))
    return txs


def test_a_control_runs_report_shows_each_agents_returns(tmp_path: Path) -> None:
    """The report of a hand-made control run, against figures worked out by hand: each
    agent's return per episode (alice -20 then 10 units, bob -22 then -2), the last 10% of
    2 episodes (episode 1), the final balances, and the Gini of agents in debt."""
    config = {"variant": "control", "task": "integrator", "agents": 2, "policy": "random"}
    run = hand_made_run(tmp_path, control_run(), config)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    out = run / "report"
    assert rows(out / "returns.parquet") == [  # 2 episodes in up to 200 blocks: 1 per block
        (0, ALICE, 1, -20, pytest.approx(-20 * N)), (0, BOB, 1, -22, pytest.approx(-22 * N)),
        (1, ALICE, 1, 10, pytest.approx(10 * N)), (1, BOB, 1, -2, pytest.approx(-2 * N)),
    ]  # fmt: skip
    report = run_report(run)
    assert report.tables["return per agent (last 10% of episodes)"].rows() == [
        (ALICE, pytest.approx(10 * N), 1), (BOB, pytest.approx(-2 * N), 1)
    ]  # fmt: skip
    assert report.tables["wealth (final)"].rows() == [
        (ALICE, pytest.approx(-10 * N)), ("auctioneer", 0.0), (BOB, pytest.approx(-24 * N)),
        (ENVIRONMENT, pytest.approx(34 * N)),
    ]  # fmt: skip
    # In debt: shares of a total that is not positive are null; the Gini is
    # 2 * |-10 - -24| / (2 * 2 * (10 + 24)) = 7 / 34.
    assert rows(out / "lorenz.parquet")[:3] == [
        (ALL_OPENED, 0.0, 0.0, None), (ALL_OPENED, 0.5, pytest.approx(-24 * N), None),
        (ALL_OPENED, 1.0, pytest.approx(-34 * N), None),
    ]  # fmt: skip
    assert rows(out / "gini.parquet")[-1][4] == pytest.approx(7 / 34)
    for name in ("wealth", "lorenz", "gini", "returns"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "return per agent" in result.output


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_report_of_something_that_is_not_a_run_is_a_one_line_error(
    tmp_path: Path, target: str
) -> None:
    """No run there: one line on stderr, a non-zero exit, nothing written."""
    path = tmp_path / target
    if target == "empty":
        path.mkdir()
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (path / "report").exists()


def test_plots_name_primitives_as_the_tables_do(tmp_path: Path) -> None:
    """bids.png's ticks name each primitive as the tables do (`R`, as in accounts `R.0`,
    `R.1`), and the winners and bids tables carry the same name beside the number."""
    from analyses.report import bid_labels, run_report

    run = simulate(tmp_path, "--task", "chain", "--bidder", "random", "--episodes", "20")
    report = run_report(run, 20)
    accounts = set(report.tables["wealth (final)"]["account"])
    for title in ("winners (last 10% of episodes)", "bids against Q* (last 10% of episodes)"):
        table = report.tables[title]
        names = dict(table.select("primitive", "name").unique().iter_rows())
        assert names == {0: "L", 1: "R"}
        assert {f"{n}.0" for n in names.values()} <= accounts
    table = report.tables["bids against Q* (last 10% of episodes)"]
    labels = bid_labels(table)
    assert labels == [f"s{s}/{'LR'[p]}" for s, p in table.select("state", "primitive").iter_rows()]
    assert not any("/p" in label for label in labels)


def test_the_learning_curve_draws_the_block_means_alone() -> None:
    """returns.png draws the mean of each block of episodes, not the min-to-max band that
    fills the plot when returns are 0 or the goal's reward."""
    from analyses.report import returns_figure

    curve = pl.DataFrame(
        {"episode": [0, 100, 200], "episodes": [100, 100, 50], "credit": [0.1, 0.4, 0.7],
         "min_credit": [0.0, 0.0, 0.0], "max_credit": [0.8, 0.8, 0.8]},
        schema_overrides={"episodes": pl.UInt32},
    )  # fmt: skip
    ax = returns_figure(curve).axes[0]
    assert not ax.collections  # no fill_between band
    (line,) = ax.lines
    assert list(line.get_ydata()) == [0.1, 0.4, 0.7]
    assert ax.get_legend().get_texts()[0].get_text() == "mean return per block of 100 episodes"


def test_the_wealth_plot_names_the_markets_accounts_and_the_richest_members() -> None:
    """With many members, wealth.png names the environment, treasury and auctioneer, and
    the LABELLED richest members at the end; the others are one grey legend entry."""
    from analyses.report import LABELLED, wealth_figure

    members = [f"m{i}.0" for i in range(20)]
    rows = [
        (account, seq, float(seq), seq * 10, final * seq / 2)
        for i, account in enumerate(members)
        for final in [float(i)]
        for seq in (1, 2)
    ] + [(a, seq, float(seq), seq * 10, v) for a, v in (("environment", -190.0),
         ("treasury", 5.0), ("auctioneer", 0.0)) for seq in (1, 2)]  # fmt: skip
    table = pl.DataFrame(rows, schema=["account", "seq", "time", "env_steps", "credit"],
                         orient="row")  # fmt: skip
    figure = wealth_figure(table, ("env_steps", "env steps (auctions)"))
    top, bottom = figure.axes
    named = [t.get_text().split(" ")[0] for t in top.get_legend().get_texts()]
    richest = [f"m{i}.0" for i in range(19, 19 - LABELLED, -1)]
    assert named == [*richest, f"{20 - LABELLED}"]
    assert top.get_legend().get_texts()[-1].get_text() == f"{20 - LABELLED} other members"
    market = {t.get_text() for t in bottom.get_legend().get_texts()}
    assert market == {"environment", "treasury", "auctioneer"}
    assert bottom.get_xlabel() == "env steps (auctions)"


def test_an_auction_runs_wealth_is_plotted_against_its_auctions(tmp_path: Path) -> None:
    """wealth.png's x axis is env steps: each checkpoint's count of auctions so far, ending
    at the run's auctions."""
    run = simulate(tmp_path, "--task", "chain", "--bidder", "random", "--episodes", "10")
    events = rundir.open_run_ledger(run).scan()
    table = wealth_over_time(events, 7)
    auctions = events.filter(pl.col("kind") == "allocate").select("seq").collect()["seq"]
    for seq, steps in table.select("seq", "env_steps").unique().iter_rows():
        assert steps == (auctions <= seq).sum()
    assert table["env_steps"].max() == auctions.len()


def banded_run() -> list[Tx]:
    """Two 100-step episodes of alice and bob on the integrator (goal band |p| < 0.05,
    |v| < 0.1; its last quarter is steps 75 to 99). Episode 0 ends each step in the band from
    step 50 on, both agents pushing +1; episode 1 only at step 99, the agents pushing against
    each other (+1, -1) for 50 steps, then (0, +1)."""
    txs = [opening(0)]
    for episode in range(2):
        for step in range(100):
            inside = step >= 50 if episode == 0 else step == 99
            controls = [1.0, 1.0] if episode == 0 else ([1.0, -1.0] if step < 50 else [0.0, 1.0])
            next_x = [0.0 if inside else 1.0, 0.0]
            control_step(txs, episode, step, controls, next_x, done=step == 99)
        episode_end(txs, episode, 100, 0)
    return txs


def test_a_control_runs_report_shows_time_in_the_band_and_psi(tmp_path: Path) -> None:
    """Worked by hand from `banded_run`: episode 0 is in the band on 50 of its 100 steps and
    holds it through its last quarter, psi = +1 on every step; episode 1 is in the band on 1
    step, does not hold, and psi = +1 on half its steps (-1 while the agents push against
    each other; +1 where one control is 0). The late table is episode 1's."""
    config = {"variant": "control", "task": "integrator", "agents": 2, "policy": "random"}
    run = hand_made_run(tmp_path, banded_run(), config)
    report = run_report(run)
    assert rows(run / "report" / "band.parquet") == [(0, 0.5, 1.0, 1.0), (1, 0.01, 0.0, 0.5)]
    late = report.tables["goal band and coordination (last 10% of episodes)"]
    assert late.rows() == [(1, 0.01, 0.0, 0.5)]
    assert (run / "report" / "band.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_gymnasium_runs_winners_are_tallied_per_primitive_in_report_and_watch(
    tmp_path: Path,
) -> None:
    """A Gymnasium env's state ids name one step of one episode each, so a table per state
    would list every state once, won once, and grow with the ledger: `market report` and
    `market watch` tally its winners (and the watch its prices and bids) over every state,
    one row per primitive, each primitive's share of all the auctions."""
    from analyses.watch.follow import EVERY_STATE, RunFollower

    run = simulate(tmp_path, "--task", "gym:CartPole-v1", "--bidder", "random", "--episodes", "30")
    allocations = DiskLedger.open_existing(run / rundir.LEDGER).scan().filter(kind="allocate")
    late = allocations.filter(pl.col("episode") >= 27).collect()  # the last 10% of 30
    expected = late.group_by("primitive").len().sort("primitive")
    table = run_report(run).tables["winners (last 10% of episodes)"].sort("primitive")
    assert table.columns == ["primitive", "wins", "share"]
    assert table.select("primitive", "wins").rows() == expected.rows()
    assert table["share"].sum() == pytest.approx(1.0)
    follow = RunFollower(run)
    while follow.poll():
        pass
    state = follow.state()
    assert {(w["state"], w["primitive"]) for w in state["winners"]} == {(None, 0), (None, 1)}
    assert sum(w["wins"] for w in state["winners"]) == allocations.collect().height
    assert list(state["prices"]["states"]) == [EVERY_STATE]
    assert {b["state"] for b in state["bids"]} == {None}
