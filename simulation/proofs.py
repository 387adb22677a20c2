"""Proofs a third party checks offline, with a head they kept and a few lines of Python
(docs/ledger.md, "Proofs"): that one event is in the ledger under that head (inclusion), and
that a ledger extends an earlier head by appending only (consistency)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.ipc as ipc

from ledger.disk import DiskLedger
from ledger.merkle import TreeHead, entry
from simulation import rundir

PROOF = "proof.json"
"""The proof's file in a proof directory (beside the segment that holds the event)."""


def head_of(ledger: DiskLedger) -> dict[str, Any]:
    """The ledger's current tree head and its signature (None when unsigned), as JSON."""
    head = ledger.tree.head()
    signature = ledger.links[-1].signature if ledger.links else None
    return {**head.model_dump(), "signature": signature}


def inclusion(ledger: DiskLedger, seq: int) -> dict[str, Any]:
    """The proof that event `seq` is in `ledger` under its current head: the event, its
    batch's leaf entry and segment, and the Merkle path from that leaf to the root."""
    if not 0 <= seq < ledger.next_seq or not ledger.links:
        raise ValueError(f"--seq {seq}: the ledger holds events 0 to {ledger.next_seq - 1:,}")
    index = next(i for i, link in enumerate(ledger.links) if link.last_seq >= seq)
    link = ledger.links[index]
    return {
        "seq": seq,
        "event": event_in(ledger.path / link.segment, seq - link.first_seq),
        "segment": link.segment,
        "entry": entry(link.digest, link.first_seq, link.last_seq).decode(),
        "head": head_of(ledger),
        "proof": ledger.tree.inclusion(index),
    }


def event_in(segment: Path, row: int) -> dict[str, Any]:
    """Row `row` of a stored segment, as the verifier in docs/ledger.md reads it."""
    table = ipc.open_file(segment.read_bytes()).read_all()
    event: dict[str, Any] = table.slice(row, 1).to_pylist()[0]
    return event


def write_inclusion(ledger: DiskLedger, proof: dict[str, Any], out: Path) -> Path:
    """A self-contained proof directory: proof.json and a copy of the event's segment."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ledger.path / proof["segment"], out / proof["segment"])
    rundir.write_json(out / PROOF, proof)
    return out / PROOF


def consistency(ledger: DiskLedger, since: str) -> dict[str, Any]:
    """The proof that `ledger`'s current head extends the earlier head `since`."""
    heads = ledger.tree.heads()
    prior: TreeHead | None = next((h for h in heads if h.root == since), None)
    if prior is None:
        raise ValueError(
            f"--since {since[:16]}: no committed prefix of this ledger has that head "
            f"(its history was rewritten, or it is another ledger)"
        )
    later = heads[-1]
    path = ledger.tree.consistency(prior.size) if prior.size < later.size else None
    return {"prior": prior.model_dump(), "head": head_of(ledger), "proof": path}
