"""The Merkle tree over committed batches: RFC 9162's hashes, and proofs that check."""

from __future__ import annotations

import hashlib

import pytest

from ledger.merkle import InvalidProof, Tree, check_consistency, check_inclusion, entry

LEAVES = [(hashlib.sha256(bytes([i])).hexdigest(), 100 * i, 100 * i + 99) for i in range(9)]


def rfc9162_root(entries: list[bytes]) -> bytes:
    """MTH as RFC 9162 section 2.1.1 defines it, written out independently."""
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    left, right = rfc9162_root(entries[:k]), rfc9162_root(entries[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_of(n: int) -> Tree:
    tree = Tree()
    for leaf in LEAVES[:n]:
        tree.append(*leaf)
    return tree


def test_the_root_at_every_size_is_rfc_9162s_tree_hash() -> None:
    """The head at size m is MTH of the first m leaf entries, and counts their events."""
    tree = tree_of(len(LEAVES))
    for head in tree.heads():
        entries = [entry(*leaf) for leaf in LEAVES[: head.size]]
        assert head.root == rfc9162_root(entries).hex()
        assert head.events == LEAVES[head.size - 1][2] + 1


def test_every_inclusion_proof_checks_and_a_wrong_leaf_does_not() -> None:
    """Each batch is proved under the root of every tree that holds it; another batch's
    entry is not proved by its path."""
    tree = tree_of(len(LEAVES))
    for size in range(1, len(LEAVES) + 1):
        root = tree.head(size).root
        for index in range(size):
            proof = tree.inclusion(index, size)
            check_inclusion(entry(*LEAVES[index]), root, proof)
            if size > 1:
                with pytest.raises(InvalidProof):
                    check_inclusion(entry(*LEAVES[(index + 1) % size]), root, proof)


def test_consistency_proves_appending_and_refuses_a_rewritten_prefix() -> None:
    """A longer tree extends each of its prefixes; a tree whose first leaf changed does not
    extend the original prefix."""
    tree = tree_of(len(LEAVES))
    for prior in range(1, len(LEAVES)):
        for size in range(prior + 1, len(LEAVES) + 1):
            check_consistency(tree.head(prior), tree.head(size), tree.consistency(prior, size))
    forged = Tree()
    forged.append(hashlib.sha256(b"forged").hexdigest(), 0, 99)
    for leaf in LEAVES[1:]:
        forged.append(*leaf)
    with pytest.raises(InvalidProof):
        check_consistency(tree.head(4), forged.head(), forged.consistency(4))


def test_a_proof_for_other_sizes_is_refused() -> None:
    """A consistency proof names its sizes; heads of other sizes are not checked against it."""
    tree = tree_of(6)
    with pytest.raises(InvalidProof, match="not 2 to 6"):
        check_consistency(tree.head(2), tree.head(), tree.consistency(3))
