"""Merkle tree heads over a ledger's committed batches, hashed as RFC 9162 (Certificate
Transparency) hashes them, with inclusion and consistency proofs.

Each committed batch is one leaf; its entry is `digest:first_seq:last_seq` (the sha256 of the
segment's stored bytes and the events it holds), so a leaf pins its bytes and its place. A
tree head (size in batches, the events they hold, the root) vouches for the whole ledger up
to that size: a head kept elsewhere catches any rewrite, and a consistency proof shows that a
longer ledger only appended to it. Leaves are batches, not events: hashing each event costs
more than the engine spends making it, and one leaf per batch keeps a billion events at
~15,000 leaves. The tree is `pymerkle`'s; any RFC 9162 verifier checks its proofs.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict
from pymerkle import ConsistencyProof, InclusionProof, InmemoryTree, InvalidProof
from pymerkle import verify_consistency as _verify_consistency
from pymerkle import verify_inclusion as _verify_inclusion

__all__ = ["InvalidProof", "Tree", "TreeHead", "entry", "leaf_hash"]


class TreeHead(BaseModel):
    """The tree over a ledger's first `size` committed batches, which hold `events` events."""

    model_config = ConfigDict(frozen=True)

    size: int
    events: int
    root: str

    def message(self) -> bytes:
        """The bytes a signed head signs: the size, the events and the root, labelled."""
        return f"market tree head v1 {self.size} {self.events} {self.root}".encode()


def entry(digest: str, first_seq: int, last_seq: int) -> bytes:
    """A committed batch's leaf entry."""
    return f"{digest}:{first_seq}:{last_seq}".encode()


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162's leaf hash: sha256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + data).digest()


class Tree:
    """The Merkle tree over committed batches, grown by one leaf per commit."""

    def __init__(self) -> None:
        self._tree = InmemoryTree(algorithm="sha256")
        self._events: list[int] = []
        self._heads: list[TreeHead] = []
        """The heads at sizes 1.. taken so far (a tree only grows: they never change)."""

    @property
    def size(self) -> int:
        return len(self._events)

    def append(self, digest: str, first_seq: int, last_seq: int) -> None:
        self._tree.append_entry(entry(digest, first_seq, last_seq))
        self._events.append(last_seq + 1)

    def head(self, size: int | None = None) -> TreeHead:
        """The head at `size` batches (default: all)."""
        size = self.size if size is None else size
        root = self._tree.get_root(size) if size else hashlib.sha256(b"").digest()
        return TreeHead(size=size, events=self._events[size - 1] if size else 0, root=root.hex())

    def heads(self) -> list[TreeHead]:
        """The head at every size from 1 batch to all of them."""
        self._heads += [self.head(size) for size in range(len(self._heads) + 1, self.size + 1)]
        return list(self._heads)

    def inclusion(self, index: int, size: int | None = None) -> dict[str, Any]:
        """The proof that batch `index` (from 0) is in the tree of `size` batches."""
        proof: dict[str, Any] = self._tree.prove_inclusion(index + 1, size or self.size).serialize()
        return proof

    def consistency(self, prior_size: int, size: int | None = None) -> dict[str, Any]:
        """The proof that the tree of `size` batches extends the one of `prior_size`."""
        proof: dict[str, Any] = self._tree.prove_consistency(
            prior_size, size or self.size
        ).serialize()
        return proof


def check_inclusion(data: bytes, root: str, proof: dict[str, Any]) -> None:
    """Raise InvalidProof unless the leaf with entry `data` is under `root`."""
    _verify_inclusion(leaf_hash(data), bytes.fromhex(root), InclusionProof.deserialize(proof))


def check_consistency(prior: TreeHead, later: TreeHead, proof: dict[str, Any]) -> None:
    """Raise InvalidProof unless `later` extends `prior`, appending only."""
    sizes = (proof["metadata"].get("prior_size"), proof["metadata"].get("size"))
    if sizes != (prior.size, later.size) or not 0 < prior.size <= later.size:
        raise InvalidProof(f"the proof is for {sizes}, not {prior.size} to {later.size} batches")
    _verify_consistency(
        bytes.fromhex(prior.root), bytes.fromhex(later.root), ConsistencyProof.deserialize(proof)
    )
