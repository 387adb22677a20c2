"""How wealth is spread over a ledger's agents: Gini, Lorenz curve, top-k share.

Who counts: every opened account except the money's sources and sinks (`environment`,
`auctioneer`, `system`, `treasury`), i.e. the agents. Their wealth is their balance
(`wealth.wealth`). Two groups of them are measured, each labelled so wherever it is shown:
ALL_OPENED, every agent account opened so far (a closed one at its balance of 0), and LIVING,
those of them not closed.

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
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from analyses.flows import CLOSE
from analyses.wealth import wealth
from ledger.events import AUCTIONEER, ENVIRONMENT, SYSTEM, TREASURY

NOT_AGENTS = frozenset({ENVIRONMENT, AUCTIONEER, SYSTEM, TREASURY})
"""Accounts that are money's sources and sinks, not agents holding wealth."""
ALL_OPENED = "all accounts ever opened"
"""The label of the measures over every agent account opened so far, the closed at 0."""
LIVING = "living members"
"""The label of the measures over the agent accounts opened and not closed."""


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
    """The agents' balances (account, units, credit) after event `upto`, poorest first, and
    whether each was closed by then (`closed`; a closed account's balance is 0)."""
    shut = closed_accounts(events, upto)
    return (
        wealth(events, upto)
        .filter(~pl.col("account").is_in(list(NOT_AGENTS)))
        .with_columns(pl.col("account").is_in(shut.implode()).alias("closed"))
        .sort("units", "account")
    )


def closed_accounts(events: pl.LazyFrame, upto: int | None = None) -> pl.Series:
    """The accounts closed by event `upto` (all events when None)."""
    closes = events.filter(pl.col("kind") == CLOSE)
    if upto is not None:
        closes = closes.filter(pl.col("seq") <= upto)
    return closes.select("account").collect(engine="streaming")["account"]


def lorenz(events: pl.LazyFrame, upto: int | None = None, living: bool = False) -> pl.DataFrame:
    """The Lorenz curve of the agents' wealth after event `upto` (`lorenz_of`)."""
    return lorenz_of(agent_wealth(events, upto), living)


def lorenz_of(held: pl.DataFrame, living: bool = False) -> pl.DataFrame:
    """The Lorenz curve of an `agent_wealth` table (ALL_OPENED, or LIVING when `living`):
    from (0, 0), one point per agent, poorest first: population_share, cumulative credit,
    wealth_share (null if the total is not positive)."""
    if living:
        held = held.filter(~pl.col("closed"))
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
    """The inequality of the agents' wealth after event `upto` (`inequality_of`)."""
    return inequality_of(agent_wealth(events, upto), top)


def inequality_of(held: pl.DataFrame, top: int = 1) -> pl.DataFrame:
    """Two rows for an `agent_wealth` table, `members` ALL_OPENED then LIVING: agents, total
    and mean credit, Gini, the `top` richest agents' share, and how many are in debt."""
    groups = {ALL_OPENED: held, LIVING: held.filter(~pl.col("closed"))}
    rows = [
        {"members": name, **_measures(part["credit"].to_numpy(), top)}
        for name, part in groups.items()
    ]
    schema = {"members": pl.String, "agents": pl.Int64, "total_credit": pl.Float64,
              "mean_credit": pl.Float64, "gini": pl.Float64, f"top{top}_share": pl.Float64,
              "in_debt": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def _measures(credit: NDArray[np.float64], top: int) -> dict[str, Any]:
    """The inequality measures of one group's balances (credit)."""
    return {
        "agents": len(credit),
        "total_credit": float(credit.sum()),
        "mean_credit": float(credit.mean()) if len(credit) else None,
        "gini": gini(credit),
        f"top{top}_share": top_share(credit, top),
        "in_debt": int((credit < 0).sum()),
    }


def gini_over_time(wealth_table: pl.DataFrame) -> pl.DataFrame:
    """The agents' Gini at every checkpoint of a `wealth.wealth_over_time` table, over the
    accounts opened by then: seq, time, env_steps, then for ALL_OPENED (the closed at 0)
    `accounts` and `gini`, and for LIVING `alive` and `gini_living`."""
    agents = wealth_table.filter(~pl.col("account").is_in(list(NOT_AGENTS)))
    rows = []
    for (seq,), part in agents.group_by("seq", maintain_order=True):
        credit = part["credit"].to_numpy()
        alive = credit[~part["closed"].to_numpy()]
        rows.append(
            {
                "seq": seq,
                "time": part["time"][0],
                "env_steps": part["env_steps"][0],
                "accounts": len(credit),
                "gini": gini(credit),
                "alive": len(alive),
                "gini_living": gini(alive),
            }
        )
    schema = {"seq": pl.Int64, "time": pl.Float64, "env_steps": pl.Int64, "accounts": pl.Int64,
              "gini": pl.Float64, "alive": pl.Int64, "gini_living": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("seq")
