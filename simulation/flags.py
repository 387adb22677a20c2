"""The flags of `market simulate`, one row per setting: what it says, where it is shown, and
where it applies. The CLI builds its options from this table and the settings' own types
and defaults (`Simulation`, `EconomyConfig`); a flag that cannot take effect is refused.

A resumed run keeps the settings it was started with, so only its budget may be given; a
flag of one variant given to the other would be ignored, so it is refused too.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from agents.fixed import BIDDERS
from market.economy import EconomyConfig
from market.mechanisms import RULES
from market.tasks import TASKS
from simulation.config import Simulation

TASK, MECHANISM, LEARNING = "Task and budget", "Mechanism and bidders", "Learning"
ECONOMY, CONTROL = "Economy (--economy hayek)", "Control variant"


@dataclass(frozen=True)
class Flag:
    """One setting as a `market simulate` flag."""

    panel: str
    help: str
    default: str | None = None
    """The default in words, where the setting's own default (None) does not say it."""
    variant: Variant | None = None
    """The only variant it applies to (None: both)."""
    negative: bool = False
    """A switch with a --no- form (a default that is on)."""
    economy: bool = False
    """A setting of the economy (`Simulation.hayek`), not of the run."""

    def field(self, name: str) -> FieldInfo:
        """The setting's field: its type and default."""
        model = EconomyConfig if self.economy else Simulation
        return model.model_fields[name]


Variant = Literal["auction", "control"]
_A: Variant = "auction"
_C: Variant = "control"
FLAGS: dict[str, Flag] = {
    "task": Flag(
        TASK,
        f"One of: {', '.join(TASKS)}; gym:ID for a Gymnasium env; PREFIX:NAME for another "
        "package's (`market tasks`).",
        "chain; control: pendulum",
    ),
    "variant": Flag(
        TASK, "auction (a society of bidders) or control (agents jointly driving one system)."
    ),
    "episodes": Flag(TASK, "Episodes to run (when --steps is not given).", "1000; control: 100"),
    "steps": Flag(
        TASK,
        "Env steps to run: auctions (in Two Rooms an auction calls an option, which takes "
        "several MiniGrid steps); control: the plant's steps.",
    ),
    "seed": Flag(TASK, "The one seed every random number derives from."),
    "primitives": Flag(
        TASK, "Chain only: the society's primitives, L and R then useless ones.", "2", _A
    ),
    "reward_scale": Flag(
        TASK,
        "Gymnasium tasks: credit per unit of the env's reward (docs/gymnasium.md).",
        "the env's: CartPole, Acrobot 0.01; others 1",
        _A,
    ),
    "reward_offset": Flag(
        TASK,
        "Gymnasium tasks: added to every step's reward before scaling (docs/gymnasium.md).",
        "the env's: 0",
        _A,
    ),
    "mechanism": Flag(
        MECHANISM,
        "; ".join(f"{key.value}: {rule.describe}" for key, rule in RULES.items()) + ".",
        variant=_A,
    ),
    "bidder": Flag(
        MECHANISM,
        f"One of: {', '.join(BIDDERS)}; with --variant control: zero or random (fixed controls "
        "instead of learners).",
        "truthful; random on the tasks over images, which have no Q* table",
    ),
    "constant": Flag(MECHANISM, "The bid of the constant bidder.", variant=_A),
    "solitary": Flag(MECHANISM, "No clones: one bidder per primitive.", variant=_A),
    "gamma": Flag(MECHANISM, "Discount of utilities and truthful bids."),
    "concurrency": Flag(
        MECHANISM, "Episodes running at once.", "1; 128 with --learn; 32 learning control"
    ),
    "kernel": Flag(
        MECHANISM,
        "episodes (a SimPy process each), rounds (all at once, as arrays) or auto (rounds when "
        "several run at once). Both write the same ledger.",
        variant=_A,
    ),
    "learn": Flag(LEARNING, "PPO primitives learn from their payoffs (control agents always do)."),
    "monolithic": Flag(
        LEARNING, "Learn with the categorical PPO baseline (env, solitary).", variant=_A
    ),
    "init": Flag(
        LEARNING,
        "Start the learners from a learning run's latest snapshot (a transfer, e.g. a society "
        "pretrained on tworooms, now on tworooms-blue).",
        variant=_A,
    ),
    "frozen": Flag(
        LEARNING,
        "With --init: the learners bid from the snapshot and never update (evaluate it, e.g. "
        "on mental-rotation-test).",
        variant=_A,
    ),
    "tensorboard": Flag(
        LEARNING,
        "A directory: write the learning metrics and the episode returns as TensorBoard "
        "scalars into DIR/RUN (one run per seed; docs/learning.md).",
    ),
    "economy": Flag(
        ECONOMY,
        "hayek: members are endowed, bid at most their wealth, pay rent, and close when "
        "bankrupt (docs/economy.md).",
        "none",
        _A,
    ),
    "endowment": Flag(ECONOMY, "Each founder's credit.", variant=_A, economy=True),
    "rent": Flag(ECONOMY, "Credit per auction a member is alive.", variant=_A, economy=True),
    "births": Flag(
        ECONOMY, "Members richer than --birth-above found children.", "births", _A, True, True
    ),
    "birth_above": Flag(
        ECONOMY, "The wealth that founds a child.", "4 x endowment", _A, economy=True
    ),
    "child": Flag(
        ECONOMY,
        "A child's policy: copy (its parent's, perturbed by --mutation) or fresh.",
        variant=_A,
        economy=True,
    ),
    "mutation": Flag(ECONOMY, "The perturbation of a child's policy.", variant=_A, economy=True),
    "dividend": Flag(
        ECONOMY, "A child's profit share paid to its parent.", variant=_A, economy=True
    ),
    "max_population": Flag(
        ECONOMY, "The most members alive at once.", "2 x founders", _A, economy=True
    ),
    "agents": Flag(CONTROL, "How many agents drive the system.", variant=_C),
    "controls": Flag(
        CONTROL, "Each agent's controls over its share of a gym: plant's action (odd).", "5", _C
    ),
    "method": Flag(CONTROL, "independent, ter, ier, iql or full.", "full", _C),
}
"""Every setting `market simulate` takes as a flag, in the order --help lists them."""
RESUMABLE = frozenset({"steps", "episodes"})
"""What `--resume` accepts besides itself: how much more to run."""


def flag(name: str) -> str:
    """`name` as typed on the command line."""
    return "--" + name.replace("_", "-")


def value_type(name: str) -> type:
    """The type a flag's value is typed in: its setting's, None and Literal choices aside
    (the settings' validation names a bad choice)."""
    annotation = FLAGS[name].field(name).annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    assert isinstance(annotation, type)
    return annotation


def default_text(name: str) -> str | None:
    """The default --help shows: the row's words, else the setting's own default."""
    row = FLAGS[name]
    if row.default is not None:
        return row.default
    default = row.field(name).default
    return None if default is None or isinstance(default, bool) else str(default)


def settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given (None: not given) as `resolve`'s flags layer: the economy's under
    `hayek`, a switch that is off left out (a preset's or file's value stands)."""
    out: dict[str, Any] = {"hayek": {}}
    for name, value in given.items():
        if value is None or (value is False and not FLAGS[name].negative):
            continue
        (out["hayek"] if FLAGS[name].economy else out)[name] = value
    return out


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
    wrong = sorted(n for n in given if n in FLAGS and FLAGS[n].variant not in (None, variant))
    if wrong:
        other = FLAGS[wrong[0]].variant
        raise ValueError(
            f"{flag(wrong[0])} is for the {other} variant; it does not apply to --variant {variant}"
        )
