"""Which `market simulate` flags apply where: a flag that cannot take effect is refused.

A resumed run keeps the settings it was started with, so only its budget may be given; a
flag of one variant given to the other would be ignored, so it is refused too.
"""

from __future__ import annotations

from collections.abc import Set

RESUMABLE = frozenset({"steps", "episodes"})
"""What `--resume` accepts besides itself: how much more to run."""
AUCTION_ONLY = frozenset(
    {
        "mechanism", "constant", "solitary", "kernel", "monolithic", "init", "frozen",
        "primitives", "economy", "endowment", "rent", "births", "birth_above", "child",
        "mutation", "dividend", "max_population",
    }
)  # fmt: skip
"""Flags of the auction variant: the control variant has no mechanism, society or economy
(its agents learn unless --bidder names a fixed policy, so --learn is accepted)."""
CONTROL_ONLY = frozenset({"agents", "method"})
"""Flags of the control variant."""


def flag(name: str) -> str:
    """`name` as typed on the command line."""
    return "--" + name.replace("_", "-")


def refuse_with_resume(given: Set[str]) -> None:
    """A one-line ValueError if a flag other than the budget comes with --resume."""
    extra = sorted(given - RESUMABLE)
    if extra:
        raise ValueError(
            f"{flag(extra[0])} cannot change a resumed run: it keeps the settings it was "
            "started with (give only --steps or --episodes with --resume)"
        )


def refuse_for_variant(given: Set[str], variant: str) -> None:
    """A one-line ValueError if a flag given does not apply to `variant`."""
    wrong = sorted(given & (AUCTION_ONLY if variant == "control" else CONTROL_ONLY))
    if wrong:
        other = "auction" if variant == "control" else "control"
        raise ValueError(
            f"{flag(wrong[0])} is for the {other} variant; it does not apply to --variant {variant}"
        )
