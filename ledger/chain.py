"""The hash chain over committed batches: each link commits to its batch and every earlier one.

A batch's link is sha256(previous link : sha256 of the batch's stored bytes : first : last seq),
so editing any stored event changes its segment's digest and breaks every later link.
"""

from __future__ import annotations

import hashlib

GENESIS = "0" * 64
"""The link before the first batch."""


def digest(data: bytes) -> str:
    """The sha256 of a batch's stored bytes."""
    return hashlib.sha256(data).hexdigest()


def link(prev: str, batch_digest: str, first_seq: int, last_seq: int) -> str:
    """The chain link of a batch, given the link before it."""
    return hashlib.sha256(f"{prev}:{batch_digest}:{first_seq}:{last_seq}".encode()).hexdigest()
