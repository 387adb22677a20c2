"""The control variant: each agent's return per episode, folded from its Reward events."""

from __future__ import annotations

import polars as pl

from analyses.wealth import episode_blocks
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


def agent_returns_curve(events: pl.LazyFrame, points: int = 200, since: int = 0) -> pl.DataFrame:
    """Each agent's mean return per block of consecutive finished episodes (from episode
    `since` on), in at most `points` blocks, folded in the query so that memory does not
    grow with the run: episode (the block's first), agent, episodes, units, credit."""
    ends, block = episode_blocks(events, points, since)
    if block is None:
        schema = {"episode": pl.Int64, "agent": pl.String, "episodes": pl.UInt32}
        return pl.DataFrame(schema=schema | {"units": pl.Int64, "credit": pl.Float64})
    finished = ends.group_by(block).agg(pl.len().alias("episodes"))
    paid = pl.col("src") == ENVIRONMENT
    earned = (
        events.filter(pl.col("kind") == "reward")
        .select(
            block,
            pl.when(paid).then(pl.col("dst")).otherwise(pl.col("src")).alias("agent"),
            pl.when(paid).then(pl.col("amount")).otherwise(-pl.col("amount")).alias("units"),
        )
        .group_by("block", "agent")
        .agg(pl.col("units").sum())
    )
    return (
        earned.join(finished, on="block")
        .rename({"block": "episode"})
        .with_columns(
            (pl.col("units").cast(pl.Float64) / pl.col("episodes") / UNIT).alias("credit")
        )
        .select("episode", "agent", "episodes", "units", "credit")
        .sort("episode", "agent")
        .collect(engine="streaming")
    )


def trajectory(events: pl.LazyFrame, episode: int) -> pl.DataFrame:
    """One row per step of a control episode: step, the state `x` it was in (a list) and the
    sum of the agents' `controls` applied there (what the plant received)."""
    return (
        events.filter((pl.col("kind") == "transition") & (pl.col("episode") == episode))
        .select("step", "x", pl.col("controls").list.sum().alias("control"))
        .sort("step")
        .collect()
    )
