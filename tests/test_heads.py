"""Same settings, same ledger, byte for byte, across changes to the code: the chain head of
every preset (on a cut budget) and of every mechanism and kernel with fixed bidders is
pinned in tests/data/heads.json.

A change that alters what a run writes (an event's layout, a price, the order of draws)
fails here; if the change is meant, say why in the commit and rewrite the pins with

    python tests/test_heads.py --write
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from simulation.config import PRESETS, resolve
from simulation.runner import OPTION_TASKS, prepare

PINS = Path(__file__).with_name("data") / "heads.json"
SMALL = ["steps=3000", "ppo.batch=256", "ppo.minibatch=64", "dqn.capacity=4096"]
"""A cut budget that still runs learners' updates (the Two Rooms presets train options
first, minutes of work, so they are left to tests/test_two_rooms.py)."""
IMAGES = ["steps=300", "ppo.batch=32", "ppo.minibatch=16"]
"""The same for CNN bidders, about 30 times slower per step."""


Case = tuple[str | None, dict[str, Any], list[str]]
"""A preset, flags and --set assignments."""


def cases() -> dict[str, Case]:
    """Every pinned case, by name."""
    out: dict[str, Case] = {}
    for name, preset in PRESETS.items():
        if preset.settings.get("task") in OPTION_TASKS:
            continue
        small = SMALL if preset.settings.get("variant") != "control" else SMALL[:1] + SMALL[3:]
        small = IMAGES if preset.settings.get("task") == "mental-rotation" else small
        out[f"preset:{name}"] = (name, {"seed": 1}, small)
    fixed = {"chain": "truthful", "bandit": "random", "duality": "constant"}
    for task, bidder in fixed.items():
        for mechanism in ("ccv", "v", "bb", "fp", "env"):
            for kernel in ("episodes", "rounds"):
                flags = {"task": task, "mechanism": mechanism, "bidder": bidder,
                         "episodes": 40, "kernel": kernel, "concurrency": 8}  # fmt: skip
                out[f"{task}:{mechanism}:{bidder}:{kernel}"] = (None, flags, [])
    for task, bidder in (("integrator", "random"), ("pendulum", "zero")):
        flags = {"variant": "control", "task": task, "bidder": bidder, "episodes": 3}
        out[f"control:{task}:{bidder}"] = (None, flags, [])
    return out


def head_of(case: Case, where: Path) -> str:
    """The chain head of the run `case` makes in `where`."""
    preset, flags, assignments = case
    sim = resolve(preset, None, flags, assignments)
    prepared = prepare(sim, where)
    return prepared.execute(audit=False).ledger.links[-1].link  # the chain pins every byte


def pinned() -> dict[str, str]:
    return dict(json.loads(PINS.read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", sorted(cases()))
def test_the_same_settings_write_the_pinned_ledger(name: str, tmp_path: Path) -> None:
    assert head_of(cases()[name], tmp_path / "run") == pinned()[name]


def test_every_case_is_pinned_and_both_kernels_agree() -> None:
    pins = pinned()
    assert set(pins) == set(cases())
    for name, head in pins.items():
        if name.endswith(":rounds"):
            assert head == pins[name.removesuffix(":rounds") + ":episodes"]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory() as tmp:
        heads = {name: head_of(case, Path(tmp) / name) for name, case in sorted(cases().items())}
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps(heads, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(heads)} heads written to {PINS}")
