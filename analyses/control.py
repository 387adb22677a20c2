"""The control variant: each agent's return per episode, folded from its Reward events."""

from __future__ import annotations

import polars as pl

from ledger.events import ENVIRONMENT
from ledger.units import UNIT


def agent_returns(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per episode and agent: the agent's undiscounted return (units and credit), the
    sum of its rewards (positive from the environment, penalties back to it)."""
    paid = pl.col("src") == ENVIRONMENT
    return (
        events.filter(pl.col("kind") == "reward")
        .select(
            "episode",
            pl.when(paid).then(pl.col("dst")).otherwise(pl.col("src")).alias("agent"),
            pl.when(paid).then(pl.col("amount")).otherwise(-pl.col("amount")).alias("units"),
        )
        .group_by("episode", "agent")
        .agg(pl.col("units").sum())
        .with_columns((pl.col("units").cast(pl.Float64) / UNIT).alias("credit"))
        .sort("episode", "agent")
        .collect()
    )
