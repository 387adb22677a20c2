"""What vouches for a disk ledger beyond its own bytes.

The rules read only the stored events, so a rewrite that is consistent (every price, balance
and hash recomputed) passes them. Three things kept elsewhere catch it: a head (the Merkle
root at the end of the run, or, in summaries written before Merkle heads, a chain link), an
earlier head the ledger must extend (checked with a consistency proof: the ledger only
appended since), and heads signed with a key the rewriter does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.disk import DiskLedger
from ledger.merkle import InvalidProof, TreeHead, check_consistency
from ledger.signing import Verifier


@dataclass(frozen=True)
class Anchors:
    """What the user brings to an audit besides the ledger."""

    head: str | None = None
    """The head the ledger must end at, or pass through (a continuation not yet closed)."""
    since: str | None = None
    """An earlier head the ledger must extend by appending only."""
    verifier: Verifier | None = None
    """The public key every committed head must be signed with."""


@dataclass(frozen=True)
class Broken:
    """What an anchor found wrong: the rule, the seq, what was expected and found."""

    seq: int
    rule: str
    expected: str
    found: str


@dataclass
class Vouched:
    """What the anchors vouch for."""

    anchored_to: int | None = None
    """When the ledger goes on past the head: the events that head covers."""
    extends: TreeHead | None = None
    """The earlier head (`since`) the ledger was proved to extend."""
    signed: int = 0
    """Committed heads that carry a signature."""
    verified: bool = False
    """Whether every head's signature was checked against a public key."""


def full_head(ledger: DiskLedger, given: str, flag: str = "--head") -> str:
    """The head of `ledger` (its tree root at some size, or a chain link) that `given` names:
    all 64 hex digits or a prefix of at least 16; a ValueError if `given` is not hex. A head
    the ledger never had is returned as given, for the audit to report."""
    text = given.strip().lower()
    if len(text) < 16 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{flag} {given!r}: expected at least 16 hex digits of a ledger head")
    known = [h.root for h in ledger.tree.heads()] + [link.link for link in ledger.links]
    named = [h for h in known if h.startswith(text)]
    return named[-1] if named else text


def check(ledger: DiskLedger, anchors: Anchors, vouched: Vouched) -> Broken | None:
    """Check `anchors` against `ledger` (its chain already checked), filling `vouched`."""
    return (
        _head(ledger, anchors.head, vouched)
        or _since(ledger, anchors.since, vouched)
        or _signatures(ledger, anchors.verifier, vouched)
    )


def _head(ledger: DiskLedger, head: str | None, vouched: Vouched) -> Broken | None:
    if head is None or head == ledger.head:
        return None
    covered = ledger.vouched(head)
    if covered is None:
        return Broken(
            ledger.next_seq, "chain", f"the recorded head {head[:16]}",
            f"head {ledger.head[:16]} (committed batches removed or rewritten)",
        )  # fmt: skip
    if covered < ledger.next_seq:
        vouched.anchored_to = covered
    return None


def _since(ledger: DiskLedger, since: str | None, vouched: Vouched) -> Broken | None:
    if since is None:
        return None
    heads = ledger.tree.heads()
    prior = next((h for h in heads if h.root == since), None)
    if prior is None:
        return Broken(
            0, "append-only", f"a ledger that extends head {since[:16]}",
            f"no committed prefix has that head (its history was rewritten, or it is "
            f"another ledger); head {ledger.head[:16]}",
        )  # fmt: skip
    later = heads[-1]
    if prior.size < later.size:
        try:
            check_consistency(prior, later, ledger.tree.consistency(prior.size))
        except InvalidProof as e:  # the tree's own proof: a fault here is ours, say so
            return Broken(prior.events, "append-only", "a valid consistency proof", str(e))
    vouched.extends = prior
    return None


def _signatures(ledger: DiskLedger, verifier: Verifier | None, vouched: Vouched) -> Broken | None:
    heads = ledger.tree.heads()
    for link, head in zip(ledger.links, heads, strict=True):
        if link.signature is not None:
            vouched.signed += 1
        if verifier is not None and not verifier.signed(head, link.signature):
            found = "no signature" if link.signature is None else "a signature the key rejects"
            return Broken(
                link.first_seq, "signature",
                f"the head after {head.events:,} events signed by the key", found,
            )  # fmt: skip
    vouched.verified = verifier is not None
    return None
