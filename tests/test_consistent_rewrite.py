"""A consistent rewrite of a finished run: every rule passes it, only a head kept elsewhere
catches it (docs/engine.md, "`market audit`")."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
from test_cli import market, verdict

from ledger import chain
from ledger.disk import MANIFEST, DiskLedger, Link
from ledger.events import TRANSFER_KINDS
from market.run import RunConfig
from simulation.rundir import LEDGER, SUMMARY

EPISODES, KEPT = 30, 27
"""Episodes the run plays, and the first of them the rewrite keeps."""


def drop_last_episodes(run: Path, kept: int) -> None:
    """Rewrite `run`'s one-segment ledger as if the run had been asked for `kept` episodes:
    its RunStart's configuration says so, every event from the next episode's start on is
    cut, the run closes there (its RunEnd counting `kept` episodes, its statements the
    balances re-folded from what is left); then re-encode the segment, recompute its digest
    and chain link, and remove summary.json (and the head it recorded)."""
    manifest = run / LEDGER / MANIFEST
    (link,) = map(Link.model_validate_json, manifest.read_text().splitlines())
    segment = run / LEDGER / link.segment
    table = ipc.open_file(pa.BufferReader(segment.read_bytes())).read_all()
    events = pl.DataFrame(pl.from_arrow(table))
    start = (pl.col("kind") == "episode_start") & (pl.col("episode") == kept)
    cut, time = events.filter(start).select("seq", "time").row(0)
    asked = RunConfig.model_validate_json(events.filter(kind="run_start")["config"][0])
    budget = pl.lit(asked.model_copy(update={"episodes": kept}).model_dump_json())
    left = events.filter(pl.col("seq") < cut).with_columns(
        config=pl.when(pl.col("kind") == "run_start").then(budget).otherwise(pl.col("config"))
    )
    moves = left.filter(pl.col("kind").is_in(sorted(TRANSFER_KINDS)))
    held = pl.concat(
        [moves.select(account="dst", delta="amount"),
         moves.select(account="src", delta=-pl.col("amount"))]
    ).group_by("account").agg(pl.col("delta").sum())  # fmt: skip
    balances = dict(held.iter_rows())
    closing = events.filter(pl.col("tx") == events["tx"][-1]).with_columns(
        seq=cut + pl.int_range(pl.len(), dtype=pl.Int64),
        tx=pl.lit(cut, pl.Int64),
        time=pl.lit(time),
        episodes=pl.when(pl.col("kind") == "run_end").then(kept).otherwise(pl.col("episodes")),
        amount=pl.when(pl.col("kind") == "balance")
        .then(pl.col("account").replace_strict(balances, default=0, return_dtype=pl.Int64))
        .otherwise(pl.col("amount")),
    )
    rewritten = pl.concat([left, closing]).to_arrow().cast(table.schema)
    rewritten = rewritten.unify_dictionaries().combine_chunks()  # one dictionary per column
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression="lz4")
    with ipc.new_file(sink, rewritten.schema, options=options) as writer:
        writer.write_table(rewritten)
    data = sink.getvalue().to_pybytes()
    segment.write_bytes(data)
    last, digest = link.first_seq + rewritten.num_rows - 1, chain.digest(data)
    forged = link.model_copy(
        update={"last_seq": last, "digest": digest,
                "link": chain.link(link.prev, digest, link.first_seq, last)}
    )  # fmt: skip
    manifest.write_text(forged.model_dump_json(exclude_none=True) + "\n")
    (run / SUMMARY).unlink()


def test_a_consistent_rewrite_passes_the_rules_but_not_the_head_kept(tmp_path: Path) -> None:
    """chain: a rewrite every other rule passes ends at another head than the one kept."""
    run = tmp_path / "chain-v"
    made = market(
        "simulate", "--task", "chain", "--mechanism", "v", "--bidder", "random",
        "--episodes", str(EPISODES), "--seed", "0", "--out", str(run),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    kept = json.loads((run / SUMMARY).read_text())["head"]
    assert kept == DiskLedger.open_existing(run / LEDGER).head
    drop_last_episodes(run, KEPT)
    ledger = DiskLedger.open_existing(run / LEDGER)
    assert ledger.head != kept

    rules_alone = market("audit", str(run), "--unanchored")
    assert rules_alone.exit_code == 0, rules_alone.output
    said = verdict(rules_alone)
    assert said.startswith(f"AUDIT CLEAN {ledger.next_seq:,} events, ")
    assert f", {KEPT} episodes; every rule holds, " in said
    assert "not closed" not in said  # a closed run: its closing statements were checked too

    for given in (kept, kept[:16]):  # all 64 hex digits, or the first 16
        anchored = market("audit", str(run), "--head", given)
        assert anchored.exit_code == 1, anchored.output
        assert verdict(anchored) == (
            f"AUDIT FAILED seq {ledger.next_seq}: chain: expected the recorded head {kept[:16]}, "
            f"found head {ledger.head[:16]} (committed batches removed or rewritten)"
        )
