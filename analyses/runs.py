"""A finished run's result row, folded from its ledger and summary.json: what a sweep
records per cell (`simulation.sweep.execute` is given `summarise_run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from analyses.control import agent_returns
from analyses.inequality import inequality
from analyses.wealth import returns
from simulation import rundir

LATE_SHARE = 0.1
"""The share of a run's last episodes that 'final' figures are taken over: a sweep's final
return, a report's winners and bids."""


def summarise_run(run: Path) -> dict[str, Any]:
    """A finished run's result row, folded from its ledger and summary.json."""
    summary = json.loads((run / rundir.SUMMARY).read_text(encoding="utf-8"))
    events = rundir.open_run_ledger(run).scan()
    config = json.loads((run / rundir.CONFIG).read_text(encoding="utf-8"))
    row: dict[str, Any] = {
        "events": summary["events"],
        "seconds": summary["seconds"],
        "episodes": summary["episodes"],
        "audit_clean": summary["audit"] == "clean",
        "run": str(run),
    }
    if config.get("variant") == "control":
        per_agent = agent_returns(events)
        late = per_agent.filter(pl.col("episode") >= _late(per_agent["episode"].unique().sort()))
        row["final_return"] = float(late["credit"].mean() or 0.0)  # type: ignore[arg-type]
        row["env_steps"] = int(per_agent.height // max(per_agent["agent"].n_unique(), 1))
    else:
        episodes = returns(events)
        late = episodes.filter(pl.col("episode") >= _late(episodes["episode"]))
        row["final_return"] = float(late["credit"].mean() or 0.0)  # type: ignore[arg-type]
        row["env_steps"] = int(episodes["steps"].sum())
        row["gini"] = float(inequality(events)["gini"][0])
    return row


def _late(episodes: pl.Series) -> int:
    if episodes.len() == 0:
        return 0
    return int(episodes[int(episodes.len() * (1 - LATE_SHARE))])
