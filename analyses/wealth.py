"""Wealth and returns, folded from a ledger's stored events with Polars."""

from __future__ import annotations

import polars as pl

from analyses.flows import CLOSE, STEP_KINDS, Flows, checkpoint_flows, flows, postings
from ledger.units import UNIT


def wealth(events: pl.LazyFrame, upto: int | None = None) -> pl.DataFrame:
    """Every account's balance after event `upto` (all events when None), in units and credit.

    Accounts opened but never paid appear with 0; rows are sorted by account.
    """
    if upto is not None:
        events = events.filter(pl.col("seq") <= upto)
    # Speed: the transfers are summed per (src, dst) in the scan; this folds a few rows.
    return (
        postings(flows(events))
        .group_by("account")
        .agg(pl.col("amount").sum().alias("units"))
        .with_columns((pl.col("units").cast(pl.Float64) / UNIT).alias("credit"))
        .sort("account")
    )


def returns(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per finished episode: its number, steps and undiscounted return (units, credit)."""
    return (
        events.filter(pl.col("kind") == "episode_end")
        .select("episode", "steps", pl.col("episode_return").alias("units"))
        .with_columns((pl.col("units") / UNIT).alias("credit"))
        .sort("episode")
        .collect()
    )


def env_steps_clock(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per transformation: its seq and the env steps the run had taken with it (every
    transformation's duration so far: an option's counts its env steps)."""
    return (
        events.filter(pl.col("kind") == "transform")
        .select("seq", pl.col("duration").cum_sum().cast(pl.Int64).alias("env_steps"))
        .collect()
    )


def finished_episodes(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per finished episode, in the order they end: its EpisodeEnd's seq, steps and
    return (units), and the env steps the run had taken by then (`env_steps_clock`)."""
    clock = env_steps_clock(events)
    ends = (
        events.filter(pl.col("kind") == "episode_end")
        .select("seq", "steps", pl.col("episode_return").alias("units"))
        .collect()
    )
    return ends.join_asof(clock, on="seq").with_columns(pl.col("env_steps").fill_null(0))


def wealth_over_time(events: pl.LazyFrame, points: int = 100) -> pl.DataFrame:
    """Every account's balance at `points` checkpoints spread evenly over the ledger.

    Checkpoint c closes after event `seq` (the last of its share of the sequence numbers);
    `time` is the SimPy time of that event and `env_steps` the env steps taken up to it
    (auctions, or the control variant's plant steps). One row per account and checkpoint from
    the checkpoint its account was opened in on (an account not yet opened has no row), sorted
    by account then seq, with the balance in units and credit, and `closed`: whether the
    account was closed by then (its balance then 0).
    """
    if points < 1:
        raise ValueError(f"points must be at least 1; got {points}")
    # Speed: a ledger's scan is ordered by seq, so its last row holds the largest seq, and
    # reading it reads only the last segment. The one scan below finds the true largest seq
    # too; the work is redone with it if the frame was not ordered.
    last = events.select(pl.col("seq").last()).collect().item()
    if last is None:
        return pl.DataFrame(schema=_OVER_TIME)
    flows = checkpoint_flows(events, _bucket(points, last))
    if (largest := flows.groups["seq"].max()) != last:
        assert isinstance(largest, int)
        last = largest
        flows = checkpoint_flows(events, _bucket(points, last))
    closes = (
        flows.groups.group_by("bucket")
        .agg(pl.col("seq").max(), pl.col("time").max(), pl.col("_steps").sum())
        .sort("bucket")
        .select(
            "bucket", "seq", "time", pl.col("_steps").cum_sum().cast(pl.Int64).alias("env_steps")
        )
    )
    moved = postings(flows, "bucket").group_by("account", "bucket").agg(pl.col("amount").sum())
    # An account counts from the checkpoint of its opening (from the first if the frame holds
    # no opening of it) and is closed from the checkpoint of its closing on.
    opened = flows.openings.group_by("account").agg(_bucket(points, last).min().alias("opened"))
    shut = (
        _closings(events, flows).group_by("account").agg(_bucket(points, last).min().alias("shut"))
    )
    grid = (
        moved.select("account")
        .unique()
        .join(opened, on="account", how="left")
        .join(shut, on="account", how="left")
        .join(closes, how="cross")
        .filter(pl.col("bucket") >= pl.col("opened").fill_null(0))
    )
    return (
        grid.join(moved, on=["account", "bucket"], how="left")
        .sort("account", "bucket")
        .with_columns(pl.col("amount").fill_null(0).cum_sum().over("account").alias("units"))
        .select(
            "account",
            "seq",
            "time",
            "env_steps",
            "units",
            (pl.col("units").cast(pl.Float64) / UNIT).alias("credit"),
            (pl.col("bucket") >= pl.col("shut")).fill_null(False).alias("closed"),
        )
    )


_OVER_TIME = {
    "account": pl.String,
    "seq": pl.Int64,
    "time": pl.Float64,
    "env_steps": pl.Int64,
    "units": pl.Int128,
    "credit": pl.Float64,
    "closed": pl.Boolean,
}
"""The schema of `wealth_over_time`."""


def _closings(events: pl.LazyFrame, flows: Flows) -> pl.DataFrame:
    """The closings (account, seq) of `events`, read only if `flows` counted any."""
    if not flows.groups["_closings"].sum():
        return pl.DataFrame(schema={"account": pl.String, "seq": pl.Int64})
    closings = events.filter(pl.col("kind") == CLOSE).select("account", "seq")
    return closings.collect(engine="streaming")


def _bucket(points: int, last: int) -> pl.Expr:
    """Each event's checkpoint (0 to points - 1) when the largest seq is `last`."""
    width = -(-(last + 1) // points)  # ceil: every seq falls in one of `points` buckets
    return (pl.col("seq") // width).alias("bucket")


def steps_before(events: pl.LazyFrame, seqs: pl.Series) -> pl.Series:
    """The env steps (as `wealth_over_time` counts them) taken before each of `seqs` (ascending,
    distinct), counted in one streaming scan: memory holds one count per seq."""
    if seqs.is_empty():
        return pl.Series("env_steps", [], pl.Int64)
    if not seqs.is_sorted() or seqs.n_unique() != seqs.len():
        raise ValueError("steps_before needs ascending, distinct sequence numbers")
    kind = pl.col("kind")
    # Each step falls before the seqs above it: it counts for the first of them and after.
    # Speed: explicit breakpoints bin elementwise, so the streaming engine never holds the
    # steps (a search of the seqs for each step is a columnar function, which would).
    first_after = pl.col("seq").bin_intervals(seqs, labels=False).alias("first")
    counts = (
        events.filter((kind == STEP_KINDS[0]) | (kind == STEP_KINDS[1]))
        .group_by(first_after)
        .agg(pl.len().alias("steps"))
        .collect(engine="streaming")
    )
    per_seq = pl.DataFrame({"first": pl.arange(0, seqs.len(), eager=True).cast(pl.UInt32)})
    return (
        per_seq.join(counts, on="first", how="left")
        .sort("first")
        .select(pl.col("steps").fill_null(0).cum_sum().cast(pl.Int64).alias("env_steps"))
        .to_series()
    )


def returns_curve(events: pl.LazyFrame, points: int = 200) -> pl.DataFrame:
    """The learning curve in at most `points` rows, folded in the query (memory flat in the
    run's length): finished episodes in blocks of consecutive episode numbers, one row per
    block with its first episode, its episodes, and their mean, min and max return (credit).
    """
    ends, block = episode_blocks(events, points)
    credit = pl.col("episode_return").cast(pl.Float64) / UNIT
    if block is None:
        schema = {"episode": pl.Int64, "episodes": pl.UInt32, "credit": pl.Float64}
        return pl.DataFrame(schema=schema | {"min_credit": pl.Float64, "max_credit": pl.Float64})
    return (
        ends.group_by(block)
        .agg(
            pl.len().alias("episodes"),
            credit.mean().alias("credit"),
            credit.min().alias("min_credit"),
            credit.max().alias("max_credit"),
        )
        .rename({"block": "episode"})
        .sort("episode")
        .collect(engine="streaming")
    )


def episode_blocks(
    events: pl.LazyFrame, points: int, since: int = 0
) -> tuple[pl.LazyFrame, pl.Expr | None]:
    """The `episode_end` events from episode `since` on, and each event's block (`block`,
    the block's first episode; null outside the finished episodes' range) of at most
    `points` blocks of consecutive episode numbers (None when no episode finished)."""
    if points < 1:
        raise ValueError(f"points must be at least 1; got {points}")
    ends = events.filter((pl.col("kind") == "episode_end") & (pl.col("episode") >= since))
    lo, hi = (
        ends.select(pl.col("episode").min().alias("lo"), pl.col("episode").max().alias("hi"))
        .collect()
        .row(0)
    )
    if lo is None:
        return ends, None
    width = -(-(hi - lo + 1) // points)
    episode = pl.col("episode")
    block = pl.when(episode.is_between(lo, hi)).then(lo + (episode - lo) // width * width)
    return ends, block.alias("block")


def late_episode(events: pl.LazyFrame, share: float) -> int:
    """The first episode of the last `share` of finished episodes (0 if none finished).

    Counted in the query, not collected: finished episodes are numbered consecutively in
    every run the engines write, so the answer is an offset from the first; otherwise (a
    ledger edited by hand, say) their numbers are sorted to find it."""
    ends = events.filter(pl.col("kind") == "episode_end").select("episode")
    n, lo, hi = (
        ends.select(
            pl.len(), pl.col("episode").min().alias("lo"), pl.col("episode").max().alias("hi")
        )
        .collect()
        .row(0)
    )
    if not n:
        return 0
    k = int(n * (1 - share))
    if hi - lo + 1 == n and ends.select(pl.col("episode").n_unique()).collect().item() == n:
        return int(lo + k)
    return int(ends.sort("episode").collect(engine="streaming")["episode"][k])
