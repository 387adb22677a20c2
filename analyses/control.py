"""The control variant: each agent's return per episode, folded from its Reward events; time
in the goal band and coordination, folded from the Transition events."""

from __future__ import annotations

import polars as pl

from agents.dqn_control import coordination
from analyses.wealth import episode_blocks
from ledger.events import ENVIRONMENT
from ledger.units import UNIT
from market.control_tasks import ControlTask


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


BAND_SCHEMA = pl.Schema(
    {
        "episode": pl.Int64,
        "episodes": pl.UInt32,
        "in_band": pl.Float64,
        "held": pl.Float64,
        "psi": pl.Float64,
    }
)
"""The columns of `band_and_coordination_curve`."""


def band_and_coordination_curve(
    events: pl.LazyFrame, task: ControlTask, points: int = 200, since: int = 0
) -> pl.DataFrame:
    """Per block of consecutive finished episodes (from episode `since` on, at most `points`
    blocks), folded in the query so that memory does not grow with the run:
    - `in_band`: the share of steps ending in the task's goal band (`ControlTask.in_goal`);
    - `held`: the share of episodes in the band for their whole last quarter (of the task's
      horizon; an episode that never reached it does not hold);
    - `psi`: the share of the agents' steps with psi = +1 (an agent's control agreeing in
      sign with the sum of the others', `agents.dqn_control.coordination`).
    Columns: episode (the block's first), episodes, in_band, held, psi."""
    _, block = episode_blocks(events, points, since)
    if block is None:
        return pl.DataFrame(schema=BAND_SCHEMA)
    d, n = task.state_dim, task.n_agents

    def band(x: pl.Series) -> pl.Series:
        return pl.Series(task.in_goal(x.list.to_array(d).to_numpy()), dtype=pl.Boolean)

    def psi(u: pl.Series) -> pl.Series:
        agree = coordination(u.list.to_array(n).to_numpy()) > 0
        return pl.Series(agree.mean(axis=1), dtype=pl.Float64)

    last_quarter = pl.col("step") >= task.horizon - task.horizon // 4
    return (
        events.filter(pl.col("kind") == "transition")
        .select(
            block,
            "episode",
            "step",
            pl.col("next_x").map_batches(band, pl.Boolean, is_elementwise=True).alias("in_band"),
            pl.col("controls").map_batches(psi, pl.Float64, is_elementwise=True).alias("psi"),
        )
        .filter(pl.col("block").is_not_null())
        .group_by("block", "episode")
        .agg(
            pl.col("in_band").mean(),
            (pl.col("in_band").filter(last_quarter).all() & last_quarter.any()).alias("held"),
            pl.col("psi").mean(),
        )
        .group_by("block")
        .agg(
            pl.len().alias("episodes"),
            pl.col("in_band").mean(),
            pl.col("held").cast(pl.Float64).mean(),
            pl.col("psi").mean(),
        )
        .rename({"block": "episode"})
        .select(*BAND_SCHEMA)
        .sort("episode")
        .collect(engine="streaming")
    )
