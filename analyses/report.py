"""A run's report: tables (Polars frames) and plots (PNG), and one self-contained HTML page.

Everything is folded from the run's stored ledger (the analyses of this package) and its
`config.json`; nothing is read from the learners. `market report RUN` prints the tables and
writes `RUN/report/*.png` and `RUN/report/report.html`, derived files that every report run
rewrites (the ledger, config and summary are never touched).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analyses.auctions import bids, bids_against, winners
from analyses.control import agent_returns_curve, band_and_coordination_curve
from analyses.income import income
from analyses.inequality import (
    ALL_OPENED,
    LIVING,
    NOT_AGENTS,
    agent_wealth,
    gini_over_time,
    inequality_of,
    lorenz_of,
)
from analyses.population import living_over_time, population
from analyses.runs import LATE_SHARE
from analyses.wealth import late_episode, returns_curve, steps_before, wealth, wealth_over_time
from market.control import ControlRunConfig, control_task_of
from market.control_tasks import ControlTask
from market.tasks import TABULAR_TASKS, Task, built_in, gym_id, make_task
from simulation import rundir

REPORT = "report"
"""The directory, inside a run directory, that a report is written to."""


@dataclass
class Report:
    """What a report shows: titled tables, and plots written as PNG files."""

    title: str
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    """Each plot's PNG; the series it draws are beside it, as Parquet of the same name."""


def run_report(run: Path, points: int = 200) -> Report:
    """The report of run directory `run`, its plots written to `run/report/`."""
    ledger = rundir.open_run_ledger(run)
    config = _config(run)
    events = ledger.scan()
    out = run / REPORT
    out.mkdir(exist_ok=True)
    report = Report(title=f"{run.name}: {config.get('task', '?')} ({_describe(config)})")
    report.tables["wealth (final)"] = wealth(events).select("account", "credit")
    report.tables["income (credit)"] = _as_credit(income(events))
    over_time = wealth_over_time(events, points)
    clock = _clock(over_time, config)
    report.plots["wealth over time"] = _save(
        wealth_figure(over_time, clock), out / "wealth.png", over_time
    )
    ginis = gini_over_time(over_time)
    if over_time.filter(~pl.col("account").is_in(list(NOT_AGENTS)))["account"].n_unique() >= 2:
        _add_inequality(report, events, ginis, clock, out)
    changes = population(events)
    if changes.height and (changes["births"][-1] or changes["deaths"][-1]):  # an economy
        report.tables["population (final)"] = changes.tail(1)
        series = population_series(events, changes, over_time)
        report.plots["population"] = _save(
            population_figure(series, clock), out / "population.png", series
        )
        living = living_over_time(over_time).join(
            ginis.select("seq", pl.col("gini").alias(f"gini ({ALL_OPENED})")),
            on="seq",
            how="left",
            maintain_order="left",  # a series in time order, as it is plotted
        )
        report.plots["the living members' wealth"] = _save(
            living_figure(living, clock), out / "living.png", living
        )
    if config.get("variant") == "control":
        _add_control(report, events, config, points, out)
    else:
        _add_auctions(report, events, config, points, out)
    return report


def _add_inequality(
    report: Report, events: pl.LazyFrame, ginis: pl.DataFrame, clock: tuple[str, str], out: Path
) -> None:
    """The final inequality table, the Lorenz curves and the Gini over time, each for all
    accounts ever opened and for the living members."""
    held = agent_wealth(events)
    table = inequality_of(held)
    report.tables["inequality (final)"] = by_measure(table)
    curves = pl.concat(
        [
            lorenz_of(held, living).select(pl.lit(name).alias("members"), pl.all())
            for name, living in ((ALL_OPENED, False), (LIVING, True))
        ]
    )
    figure = lorenz_figure(curves, dict(table.select("members", "gini").iter_rows()))
    report.plots["Lorenz curve"] = _save(figure, out / "lorenz.png", curves)
    report.plots["Gini over time"] = _save(gini_figure(ginis, clock), out / "gini.png", ginis)


def _add_control(
    report: Report, events: pl.LazyFrame, config: dict[str, Any], points: int, out: Path
) -> None:
    """The control variant's late return per agent and learning curves; when the run's task
    is known, time in its goal band and psi over training."""
    since = late_episode(events, LATE_SHARE)
    late = agent_returns_curve(events, 1, since=since)
    report.tables["return per agent (last 10% of episodes)"] = late.select(
        "agent", pl.col("credit").alias("mean_return"), "episodes"
    )
    curves = agent_returns_curve(events, points)
    report.plots["learning curves"] = _save(
        agent_returns_figure(curves), out / "returns.png", curves
    )
    task = _control_task(config)
    if task is None:
        return
    banded = gym_id(task.name) is None  # a Gymnasium plant has no goal band
    shown = ["in_band", "held", "psi"] if banded else ["psi"]
    late_share = band_and_coordination_curve(events, task, 1, since=since)
    report.tables["goal band and coordination (last 10% of episodes)"] = late_share.select(
        "episodes", *shown
    )
    series = band_and_coordination_curve(events, task, points).select("episode", *shown)
    report.plots["goal band and coordination"] = _save(
        band_figure(series), out / "band.png", series
    )


def _control_task(config: dict[str, Any]) -> ControlTask | None:
    """The control task a run's recorded configuration names (`market.control.control_task_of`
    of it); None if it is not a configuration, or names a task that cannot be made here."""
    try:
        settings = {k: v for k, v in config.items() if k != "run_id"}  # derived, not a setting
        recorded = ControlRunConfig.model_validate(settings)
    except ValueError:
        return None
    try:
        return control_task_of(recorded)
    except (ValueError, ImportError):
        return None


def _add_auctions(
    report: Report, events: pl.LazyFrame, config: dict[str, Any], points: int, out: Path
) -> None:
    """The auction variant's learning curve, late winners and, for a tabular task, the late
    bids against Q*; primitives named as the accounts name them when the task is known."""
    curve = returns_curve(events, points)
    report.plots["learning curve"] = _save(returns_figure(curve), out / "returns.png", curve)
    since = late_episode(events, LATE_SHARE)
    names = primitive_names_of(config)
    if states_recur(config):
        won = winners(events, since)
    else:  # one row per primitive, over every state
        won = winners(events, since, per_state=False).drop("state")
    report.tables["winners (last 10% of episodes)"] = _named(won, names)
    q = q_star_of(config)
    if q is not None:
        table = _named(bids_against(bids(events, since), q), names)
        report.tables["bids against Q* (last 10% of episodes)"] = table
        report.plots["bids against Q*"] = _save(bids_figure(table), out / "bids.png", table)


def by_measure(table: pl.DataFrame) -> pl.DataFrame:
    """An `inequality` table turned to one row per measure and one column per group of
    members (ALL_OPENED, LIVING): narrow enough for a terminal, the groups side by side."""
    numbers = table.with_columns(pl.exclude("members").cast(pl.Float64))
    return numbers.transpose(include_header=True, header_name="measure", column_names="members")


def population_series(
    events: pl.LazyFrame, changes: pl.DataFrame, over_time: pl.DataFrame
) -> pl.DataFrame:
    """A `population` table with each row's env steps (those taken before it), and one row
    more at the run's end (its last checkpoint in `over_time`), so the plot spans the run."""
    series = changes.with_columns(steps_before(events, changes["seq"]).alias("env_steps"))
    if over_time.height:
        end = over_time.select("seq", "time", "env_steps").sort("seq").tail(1)
        if end["seq"][0] > series["seq"][-1]:
            last = series.tail(1).select("alive", "births", "deaths")
            series = pl.concat([series, end.hstack(last).select(series.columns)])
    return series.select("seq", "time", "env_steps", "alive", "births", "deaths")


def sweep_report(out: Path) -> Report:
    """The report of sweep directory `out`: each cell's final return over its seeds."""
    from simulation.sweep import axes_of, compare, results

    table = results(out)
    axes = axes_of(out)
    folder = out / REPORT
    folder.mkdir(exist_ok=True)
    report = Report(title=f"{out.name}: sweep over {', '.join(axes) or 'seeds'}")
    report.tables["final return per cell (credit, over seeds)"] = compare(table, axes)
    order = [*axes, "seed", "final_return", "env_steps", "episodes", "audit_clean"]
    report.tables["runs"] = table.select(order).sort([*axes, "seed"])
    report.plots["final return per cell"] = _plot_cells(table, axes, folder / "cells.png")
    return report


def write_html(report: Report, path: Path) -> Path:
    """One self-contained page: every table, and every plot embedded as a data URI."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}th{background:#eee}img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(report.title)}</h1>",
    ]
    for name, png in report.plots.items():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' ")
        parts.append(f"src='data:image/png;base64,{data}'>")
    for name, table in report.tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{table_html(table)}")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def table_html(table: pl.DataFrame, limit: int = 200) -> str:
    """`table` (its first `limit` rows) as an HTML table, every value escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in table.head(limit).iter_rows()
    )
    more = f"<p>({table.height - limit} more rows)</p>" if table.height > limit else ""
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _config(run: Path) -> dict[str, Any]:
    path = run / rundir.CONFIG
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _describe(config: dict[str, Any]) -> str:
    if config.get("variant") == "control":
        who = config.get("method") or config.get("policy")
        return f"control, {config.get('agents')} agents, {who}"
    return f"{config.get('mechanism', '?')}, {config.get('bidder', '?')}"


def _as_credit(table: pl.DataFrame) -> pl.DataFrame:
    parts = ("rewards", "sales", "purchases", "mint", "net")
    return table.select("account", *(pl.col(p).cast(pl.Float64) / 1e9 for p in parts))


def q_star_of(config: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """Q* of the run's task at its gamma when the task is tabular; None otherwise."""
    task = _tabular_task(config)
    if task is None or not isinstance(config.get("gamma"), float):
        return None
    return task.q_star(float(config["gamma"]))


def _tabular_task(config: dict[str, Any]) -> Task | None:
    """The run's task if it is tabular (made without loading anything), else None."""
    task = config.get("task")
    if task not in TABULAR_TASKS:
        return None
    primitives = config.get("primitives")
    return make_task(str(task), primitives=primitives if isinstance(primitives, int) else None)


def states_recur(config: dict[str, Any]) -> bool:
    """Whether the run's state ids name states an episode can come back to, so that a table
    per state stays as small as the task: a built-in task's do. A Gymnasium env's name one
    step of one episode each (`market.gym_tasks`), and another package's task may do the
    same, so their winners, bids and prices are tallied over every state at once. A run
    that names no task (written by hand, or before there were others) is taken as built in."""
    task = config.get("task")
    return not isinstance(task, str) or built_in(task)


def primitive_names_of(config: dict[str, Any]) -> tuple[str, ...] | None:
    """The names of the run's primitives, as its accounts carry them (`R` of `R.0`), when
    its task is tabular; None otherwise."""
    task = _tabular_task(config)
    return None if task is None else task.primitive_names


def _named(table: pl.DataFrame, names: tuple[str, ...] | None) -> pl.DataFrame:
    """`table` with each primitive's `name` beside its number (unchanged without names)."""
    if names is None:
        return table
    name = pl.col("primitive").replace_strict(
        list(range(len(names))), list(names), default=None, return_dtype=pl.String
    )
    at = table.columns.index("primitive") + 1
    columns = [*table.columns[:at], "name", *table.columns[at:]]
    return table.with_columns(name.alias("name")).select(columns)


def _clock(over_time: pl.DataFrame, config: dict[str, Any]) -> tuple[str, str]:
    """The column the economy plots take as x, and its axis label: env steps, when the run
    took any; SimPy time otherwise."""
    if over_time.height and (over_time["env_steps"].max() or 0) > 0:  # type: ignore[operator]
        what = "plant steps" if config.get("variant") == "control" else "auctions"
        return "env_steps", f"env steps ({what})"
    return "time", "SimPy time"


# --- plots -------------------------------------------------------------------------------


def _figure(rows: int = 1, width: float = 7) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows == 1:
        return plt.subplots(figsize=(width, 4))
    return plt.subplots(rows, 1, figsize=(width, 2.6 * rows), sharex=True, squeeze=True)


def _save(fig: Any, path: Path, series: pl.DataFrame) -> Path:
    """Write the figure to `path` and the series it draws beside it (`.parquet`)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    series.write_parquet(path.with_suffix(".parquet"))
    return path


LABELLED = 8
"""How many members the wealth plot names: the richest at the end of the run."""


def wealth_figure(table: pl.DataFrame, clock: tuple[str, str] = ("time", "SimPy time")) -> Any:
    """Each account's balance over the run (a `wealth_over_time` table): the members above,
    the richest LABELLED at the end named and the others grey; the market's own accounts
    (environment, treasury, auctioneer), whose balances dwarf the members', below."""
    x, label = clock
    market = table.filter(pl.col("account").is_in(list(NOT_AGENTS)))
    members = table.filter(~pl.col("account").is_in(list(NOT_AGENTS)))
    panels = [part for part in (members, market) if part.height]
    fig, axes = _figure(len(panels), width=9)
    axes = list(np.atleast_1d(axes))
    if members.height:
        _draw_members(axes[0], members, x)
        axes[0].set_title("wealth per member over the run")
    if market.height:
        ax = axes[-1]
        for (account,), part in market.group_by("account", maintain_order=True):
            ax.plot(part[x], part["credit"], "--", label=str(account))
        ax.set_title("the market's own accounts (money's sources and sinks)", fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    for ax in axes:
        ax.set_ylabel("balance (credit)")
    axes[-1].set_xlabel(label)
    return fig


def _draw_members(ax: Any, members: pl.DataFrame, x: str) -> None:
    """The members' balances: the LABELLED richest at the end in colour, the rest grey."""
    end = members.filter(pl.col("seq") == pl.col("seq").max().over("account"))
    ranked = end.sort(["credit", "account"], descending=[True, False])["account"].to_list()
    named, others = ranked[:LABELLED], ranked[LABELLED:]
    for account in others:
        part = members.filter(pl.col("account") == account)
        ax.plot(part[x], part["credit"], color="0.75", linewidth=0.8)
    for i, account in enumerate(named):
        part = members.filter(pl.col("account") == account)
        final = part["credit"][-1]
        ax.plot(part[x], part["credit"], color=f"C{i}", label=f"{account} ({final:.4g} at the end)")
    if others:
        ax.plot([], [], color="0.75", label=f"{len(others)} other members")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))


def lorenz_figure(curves: pl.DataFrame, ginis: dict[str, float] | None = None) -> Any:
    """The Lorenz curve of the agents' final wealth for each group of `curves` (`members`:
    ALL_OPENED, LIVING), each labelled with its Gini if `ginis` gives it."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="equal wealth")
    shares = curves["wealth_share"].null_count() == 0
    for i, ((members,), part) in enumerate(curves.group_by("members", maintain_order=True)):
        gini = (ginis or {}).get(str(members))
        label = str(members) if gini is None else f"{members} (Gini {gini:.3f})"
        y = part["wealth_share"] if shares else part["cumulative_credit"]
        ax.plot(part["population_share"], y, "o-" if i == 0 else "s--", markersize=3, label=label)
    if shares:
        ax.set_ylabel("share of the group's wealth")
    else:
        ax.set_ylabel("cumulative wealth (credit; total not positive)")
    ax.set_title("Lorenz curve of the agents' final wealth (the closed at 0 in all accounts)")
    ax.set_xlabel("share of the group's agents, poorest first")
    ax.legend(fontsize="small")
    return fig


def gini_figure(table: pl.DataFrame, clock: tuple[str, str] = ("time", "SimPy time")) -> Any:
    """A `gini_over_time` table: the Gini of every agent account opened by then (the closed
    at 0) and of the living members."""
    x, label = clock
    fig, ax = _figure()
    ax.plot(table[x], table["gini"], label=f"{ALL_OPENED} (by then; the closed at 0)")
    ax.plot(table[x], table["gini_living"], "--", label=LIVING)
    ax.set_ylim(0, 1)
    ax.set_title("Gini of the agents' wealth over the run (accounts opened by then)")
    ax.set_xlabel(label)
    ax.set_ylabel("Gini (0 equal, 1 one agent holds all)")
    ax.legend(fontsize="small")
    return fig


def population_figure(series: pl.DataFrame, clock: tuple[str, str] = ("time", "SimPy time")) -> Any:
    """A `population_series`: the living members, births and deaths so far."""
    x, label = clock
    fig, ax = _figure()
    ax.step(series[x], series["alive"], where="post", label="living members")
    ax.step(series[x], series["births"], where="post", label="births so far")
    ax.step(series[x], series["deaths"], where="post", label="deaths so far")
    ax.set_ylim(bottom=0)
    ax.set_title("population of the economy over the run")
    ax.set_xlabel(label)
    ax.set_ylabel("members")
    ax.legend(fontsize="small")
    return fig


def living_figure(living: pl.DataFrame, clock: tuple[str, str] = ("time", "SimPy time")) -> Any:
    """A `living_over_time` table beside the Gini of all accounts ever opened: the living
    members' Gini and the richest living member's share."""
    x, label = clock
    fig, ax = _figure()
    ax.plot(living[x], living["gini"], label=f"Gini, {LIVING}")
    everyone = f"gini ({ALL_OPENED})"
    if everyone in living.columns:
        ax.plot(living[x], living[everyone], ":", color="grey",
                label=f"Gini, {ALL_OPENED} (the closed at 0)")  # fmt: skip
    ax.plot(living[x], living["top1_share"], label="the richest living member's share")
    ax.set_ylim(0, 1)
    ax.set_title("wealth distribution of the living members over the run")
    ax.set_xlabel(label)
    ax.set_ylabel("share")
    ax.legend(fontsize="small")
    return fig


def returns_figure(curve: pl.DataFrame) -> Any:
    """A `returns_curve`: the mean return of each block of episodes. Each block's min and max
    are in the series, not drawn: with returns of 0 or the goal's reward they span the whole
    range and hide the mean."""
    fig, ax = _figure()
    x = curve["episode"].to_numpy()
    width = int(curve["episodes"].max() or 1)  # type: ignore[arg-type]
    ax.plot(x, curve["credit"], label=f"mean return per block of {width} episodes"
            if width > 1 else "return per episode")  # fmt: skip
    ax.set_title("learning curve: the society's return per episode")
    ax.set_xlabel("episode")
    ax.set_ylabel("undiscounted return (credit)")
    ax.legend(fontsize="small")
    return fig


def agent_returns_figure(per_agent: pl.DataFrame) -> Any:
    """An `agent_returns_curve`: each agent's mean return per block of episodes."""
    fig, ax = _figure()
    for (agent,), part in per_agent.group_by("agent", maintain_order=True):
        ax.plot(part["episode"], part["credit"], label=str(agent))
    ax.set_title("learning curves: each agent's mean return per episode (blocks of episodes)")
    ax.set_xlabel("episode")
    ax.set_ylabel("undiscounted return (credit)")
    ax.legend(fontsize="small")
    return fig


BAND_LABELS = {
    "in_band": "steps in the goal band",
    "held": "episodes holding the band through their last quarter",
    "psi": "agents' steps with psi = +1 (pushing with the others)",
}


def band_figure(series: pl.DataFrame) -> Any:
    """A `band_and_coordination_curve`: per block of episodes, the shares it holds."""
    fig, ax = _figure()
    for column, label in BAND_LABELS.items():
        if column in series.columns:
            ax.plot(series["episode"], series[column], label=label)
    ax.set_ylim(0, 1)
    ax.set_title("goal band and coordination over training (blocks of episodes)")
    ax.set_xlabel("episode")
    ax.set_ylabel("share")
    ax.legend(fontsize="small")
    return fig


def bids_figure(table: pl.DataFrame) -> Any:
    """A bids-against-Q* table: each (state, primitive)'s mean bid beside Q*, the primitive
    named as the tables name it (its `name`, the `R` of accounts `R.0`, `R.1`) if known."""
    fig, ax = _figure()
    labels = bid_labels(table)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, table["mean_bid"], width=0.4, label="mean bid")
    ax.bar(x + 0.2, table["q_star"], width=0.4, label="Q*(state, primitive)")
    ax.set_xticks(x, labels, rotation=90, fontsize="x-small")
    ax.set_title("bids against Q* (last 10% of episodes)")
    ax.set_xlabel("state / primitive")
    ax.set_ylabel("credit")
    ax.legend(fontsize="small")
    return fig


def bid_labels(table: pl.DataFrame) -> list[str]:
    """Each row's tick label: `s<state>/<name>` (`p<primitive>` if it has no name)."""
    names = table["name"] if "name" in table.columns else pl.repeat(None, table.height, eager=True)
    return [
        f"s{s}/{n if n is not None else f'p{p}'}"
        for s, p, n in zip(table["state"], table["primitive"], names, strict=True)
    ]


def _plot_cells(table: pl.DataFrame, axes: list[str], path: Path) -> Path:
    fig, ax = _figure()
    label = (
        pl.concat_str([pl.col(a).cast(pl.String) for a in axes], separator=" / ")
        if axes
        else pl.lit("all")
    )
    points = table.with_columns(label.alias("cell")).sort("cell", "seed")
    cells = points["cell"].unique(maintain_order=True).to_list()
    for i, cell in enumerate(cells):
        values = points.filter(pl.col("cell") == cell)["final_return"].to_numpy()
        ax.scatter(np.full(len(values), i), values, alpha=0.7, color="C0")
        ax.plot([i - 0.25, i + 0.25], [np.median(values)] * 2, color="C1", linewidth=2)
    ax.set_xticks(range(len(cells)), cells, rotation=30, fontsize="small")
    ax.set_title("final return per cell: one point per seed, the bar at the median")
    ax.set_xlabel(" / ".join(axes) or "cell")
    ax.set_ylabel("mean return, last 10% of episodes (credit)")
    return _save(fig, path, points.select("cell", "seed", "final_return"))
