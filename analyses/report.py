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
from analyses.control import agent_returns_curve
from analyses.income import income
from analyses.inequality import NOT_AGENTS, gini_over_time, inequality, lorenz
from analyses.population import living_inequality, population
from analyses.wealth import late_episode, returns_curve, wealth, wealth_over_time
from market import rundir
from market.tasks import TABULAR_TASKS, make_task

REPORT = "report"
"""The directory, inside a run directory, that a report is written to."""
LATE_SHARE = 0.1
"""The share of a run's last episodes that 'final' figures (winners, bids) are taken over."""


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
    report.plots["wealth over time"] = _plot_wealth(over_time, out / "wealth.png")
    agents = over_time.filter(~pl.col("account").is_in(list(NOT_AGENTS)))
    if agents["account"].n_unique() >= 2:
        report.tables["inequality (final)"] = inequality(events)
        report.plots["Lorenz curve"] = _plot_lorenz(lorenz(events), out / "lorenz.png")
        report.plots["Gini over time"] = _plot_gini(gini_over_time(over_time), out / "gini.png")
    changes = population(events)
    if changes.height and (changes["births"][-1] or changes["deaths"][-1]):  # an economy
        report.tables["population (final)"] = changes.tail(1)
        report.plots["population"] = _plot_population(changes, out / "population.png")
        living = living_inequality(events, points)
        report.plots["the living members' wealth"] = _plot_living(living, out / "living.png")
    if config.get("variant") == "control":
        late = agent_returns_curve(events, 1, since=late_episode(events, LATE_SHARE))
        report.tables["return per agent (last 10% of episodes)"] = late.select(
            "agent", pl.col("credit").alias("mean_return"), "episodes"
        )
        curves = agent_returns_curve(events, points)
        report.plots["learning curves"] = _plot_agent_returns(curves, out / "returns.png")
    else:
        curve = returns_curve(events, points)
        report.plots["learning curve"] = _plot_returns(curve, out / "returns.png")
        since = late_episode(events, LATE_SHARE)
        report.tables["winners (last 10% of episodes)"] = winners(events, since)
        q = _q_star(config)
        if q is not None:
            table = bids_against(bids(events, since), q)
            report.tables["bids against Q* (last 10% of episodes)"] = table
            report.plots["bids against Q*"] = _plot_bids(table, out / "bids.png")
    return report


def sweep_report(out: Path) -> Report:
    """The report of sweep directory `out`: each cell's final return over its seeds."""
    from analyses.sweep import axes_of, compare, results

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


def _q_star(config: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    task = config.get("task")
    if task not in TABULAR_TASKS or not isinstance(config.get("gamma"), float):
        return None
    primitives = config.get("primitives")
    chain = make_task(str(task), primitives=primitives if isinstance(primitives, int) else None)
    return chain.q_star(float(config["gamma"]))


# --- plots -------------------------------------------------------------------------------


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


def _save(fig: Any, path: Path, series: pl.DataFrame) -> Path:
    """Write the figure to `path` and the series it draws beside it (`.parquet`)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    series.write_parquet(path.with_suffix(".parquet"))
    return path


def _plot_wealth(table: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    for (account,), part in table.group_by("account", maintain_order=True):
        style = "--" if account in NOT_AGENTS else "-"
        ax.plot(part["time"], part["credit"], style, label=str(account))
    ax.set_title("wealth per account over the run")
    ax.set_xlabel("SimPy time")
    ax.set_ylabel("balance (credit)")
    if table["account"].n_unique() <= 12:
        ax.legend(fontsize="small")
    return _save(fig, path, table)


def _plot_lorenz(curve: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ":", color="grey", label="equal wealth")
    shares = curve["wealth_share"]
    if shares.null_count() == 0:
        ax.plot(curve["population_share"], shares, marker="o", label="agents' wealth")
        ax.set_ylabel("share of the agents' wealth")
    else:
        ax.plot(curve["population_share"], curve["cumulative_credit"], marker="o",
                label="cumulative wealth (total not positive)")  # fmt: skip
        ax.set_ylabel("cumulative wealth (credit)")
    ax.set_title("Lorenz curve of the agents' final wealth")
    ax.set_xlabel("share of agents, poorest first")
    ax.legend(fontsize="small")
    return _save(fig, path, curve)


def _plot_gini(table: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    ax.plot(table["time"], table["gini"])
    ax.set_ylim(0, 1)
    ax.set_title("Gini coefficient of the agents' wealth over the run")
    ax.set_xlabel("SimPy time")
    ax.set_ylabel("Gini (0 equal, 1 one agent holds all)")
    return _save(fig, path, table)


def _plot_population(changes: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    ax.step(changes["time"], changes["alive"], where="post", label="living members")
    ax.step(changes["time"], changes["births"], where="post", label="births so far")
    ax.step(changes["time"], changes["deaths"], where="post", label="deaths so far")
    ax.set_title("population of the economy over the run")
    ax.set_xlabel("SimPy time")
    ax.set_ylabel("members")
    ax.legend(fontsize="small")
    return _save(fig, path, changes)


def _plot_living(living: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    ax.plot(living["time"], living["gini"], label="Gini of the living members' wealth")
    ax.plot(living["time"], living["top1_share"], label="the richest member's share")
    ax.set_ylim(0, 1)
    ax.set_title("wealth distribution of the living members over the run")
    ax.set_xlabel("SimPy time")
    ax.set_ylabel("share")
    ax.legend(fontsize="small")
    return _save(fig, path, living)


def _plot_returns(curve: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    x = curve["episode"].to_numpy()
    ax.fill_between(x, curve["min_credit"], curve["max_credit"], alpha=0.2, label="min to max")
    ax.plot(x, curve["credit"], label="mean")
    ax.set_title("learning curve: the society's return per episode (blocks of episodes)")
    ax.set_xlabel("episode")
    ax.set_ylabel("undiscounted return (credit)")
    ax.legend(fontsize="small")
    return _save(fig, path, curve)


def _plot_agent_returns(per_agent: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    for (agent,), part in per_agent.group_by("agent", maintain_order=True):
        ax.plot(part["episode"], part["credit"], label=str(agent))
    ax.set_title("learning curves: each agent's mean return per episode (blocks of episodes)")
    ax.set_xlabel("episode")
    ax.set_ylabel("undiscounted return (credit)")
    ax.legend(fontsize="small")
    return _save(fig, path, per_agent)


def _plot_bids(table: pl.DataFrame, path: Path) -> Path:
    fig, ax = _figure()
    labels = [f"s{s}/p{p}" for s, p in table.select("state", "primitive").iter_rows()]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, table["mean_bid"], width=0.4, label="mean bid")
    ax.bar(x + 0.2, table["q_star"], width=0.4, label="Q*(state, primitive)")
    ax.set_xticks(x, labels, rotation=90, fontsize="x-small")
    ax.set_title("bids against Q* (last 10% of episodes)")
    ax.set_xlabel("state / primitive")
    ax.set_ylabel("credit")
    ax.legend(fontsize="small")
    return _save(fig, path, table)


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
