"""How wealth is spread over a ledger's agents: Gini, Lorenz curve, top-k share.

Who counts: every opened account except the money's sources and sinks (`environment`,
`auctioneer`, `system`), i.e. the agents. Their wealth is their balance (`wealth.wealth`).

Negative wealth. An agent that has paid more than it earned holds a negative balance, and
the textbook Gini (mean absolute difference over twice the mean) then leaves [0, 1] and is
undefined when the mean is not positive. We use the normalisation of Raffinetti, Siletti
and Vernizzi (2015): G = sum_i sum_j |w_i - w_j| / (2 n sum_i |w_i|). It is the textbook
Gini when no wealth is negative, lies in [0, 1] always, and is 0 exactly when every agent
holds the same (0 by convention when every agent holds nothing). Shares (Lorenz curve,
top-k) are of the agents' total wealth and are null when that total is not positive; the
Lorenz curve's cumulative wealth in credit is given either way, and it dips below zero
where the poorest agents are in debt.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl
from numpy.typing import NDArray

from analyses.wealth import wealth
from ledger.events import AUCTIONEER, ENVIRONMENT, SYSTEM, TREASURY

NOT_AGENTS = frozenset({ENVIRONMENT, AUCTIONEER, SYSTEM, TREASURY})
"""Accounts that are money's sources and sinks, not agents holding wealth."""


def gini(values: Iterable[float] | NDArray[np.float64]) -> float:
    """The Gini coefficient of `values`, normalised for negative values (module docstring)."""
    w = np.sort(_array(values))
    n = len(w)
    scale = np.abs(w).sum()
    if n == 0 or scale == 0:
        return 0.0
    # Speed: sum_i sum_j |w_i - w_j| = 2 sum_i (2 i - n + 1) w_(i) over the sorted values.
    pairs = 2.0 * float(((2 * np.arange(n) - n + 1) * w).sum())
    return float(pairs / (2 * n * scale))


def top_share(values: Iterable[float] | NDArray[np.float64], k: int) -> float | None:
    """The share of the total held by the k richest (None if the total is not positive)."""
    w = np.sort(_array(values))[::-1]
    total = w.sum()
    return float(w[:k].sum() / total) if total > 0 else None


def _array(values: Iterable[float] | NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(values if isinstance(values, np.ndarray) else list(values), np.float64)


def agent_wealth(events: pl.LazyFrame, upto: int | None = None) -> pl.DataFrame:
    """The agents' balances (account, units, credit) after event `upto`, poorest first."""
    return (
        wealth(events, upto)
        .filter(~pl.col("account").is_in(list(NOT_AGENTS)))
        .sort("units", "account")
    )


def lorenz(events: pl.LazyFrame, upto: int | None = None) -> pl.DataFrame:
    """The Lorenz curve of the agents' wealth: from (0, 0), one point per agent, poorest first:
    population_share, cumulative credit, wealth_share (null if the total is not positive)."""
    held = agent_wealth(events, upto)
    n = held.height
    cumulative = np.concatenate([[0.0], np.cumsum(held["credit"].to_numpy())])
    total = cumulative[-1]
    return pl.DataFrame(
        {
            "population_share": np.arange(n + 1) / max(n, 1),
            "cumulative_credit": cumulative,
            "wealth_share": cumulative / total if total > 0 else [None] * (n + 1),
        },
        schema={
            "population_share": pl.Float64,
            "cumulative_credit": pl.Float64,
            "wealth_share": pl.Float64,
        },
    )


def inequality(events: pl.LazyFrame, upto: int | None = None, top: int = 1) -> pl.DataFrame:
    """One row: agents, total and mean credit, Gini, the `top` richest agents' share, and how
    many agents are in debt."""
    held = agent_wealth(events, upto)
    credit = held["credit"].to_numpy()
    return pl.DataFrame(
        [
            {
                "agents": held.height,
                "total_credit": float(credit.sum()),
                "mean_credit": float(credit.mean()) if held.height else None,
                "gini": gini(credit),
                f"top{top}_share": top_share(credit, top),
                "in_debt": int((credit < 0).sum()),
            }
        ]
    )


def gini_over_time(wealth_table: pl.DataFrame) -> pl.DataFrame:
    """The agents' Gini at every checkpoint of a `wealth.wealth_over_time` table."""
    agents = wealth_table.filter(~pl.col("account").is_in(list(NOT_AGENTS)))
    rows = [
        {"seq": seq, "time": part["time"][0], "gini": gini(part["credit"].to_numpy())}
        for (seq,), part in agents.group_by("seq", maintain_order=True)
    ]
    return pl.DataFrame(rows, schema={"seq": pl.Int64, "time": pl.Float64, "gini": pl.Float64})
