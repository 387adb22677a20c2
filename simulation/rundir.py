"""A run directory: `config.json` (what was run), `simulation.toml` (the settings it was asked
for), `ledger/` (what happened), `summary.json`.

Nothing in a run directory is ever overwritten: a new run needs a new directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ledger.disk import MANIFEST, DiskLedger
from ledger.errors import CorruptLedger

CONFIG = "config.json"
SIMULATION = "simulation.toml"
"""What was asked for (simulation.config.Simulation): `--config` it to run it again."""
SUMMARY = "summary.json"
ENV = "env.json"
"""A Gymnasium task's env as the run made it: id, Gymnasium's version, wrappers, horizon and
reward scale (the configuration names the id; this says what it was)."""
LEDGER = "ledger"


def new_run_dir(out: Path | None, default_name: str, root: Path = Path("runs")) -> Path:
    """`out` if it holds no run yet, else a fresh `root/default_name[-k]`."""
    if out is not None:
        if (out / LEDGER / MANIFEST).exists() or (out / CONFIG).exists():
            raise FileExistsError(f"{out} already holds a run; choose another --out")
        return out
    candidate, k = root / default_name, 1
    while candidate.exists():
        k += 1
        candidate = root / f"{default_name}-{k}"
    return candidate


def open_run_ledger(run: Path) -> DiskLedger:
    """The ledger of run directory `run` (or `run` itself when it is a ledger directory)."""
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run directory")
    path = run / LEDGER if (run / LEDGER).is_dir() else run
    if not (path / MANIFEST).is_file():
        raise CorruptLedger(f"{run}: not a run directory (no {LEDGER}/{MANIFEST})")
    return DiskLedger.open_existing(path)


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write `data` as indented JSON, atomically (a kill leaves the old file or the new)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summary_disagrees(run: Path, last_run: tuple[int, int, int] | None) -> str | None:
    """What summary.json states of the run's last invocation and its ledger does not bear
    out (events, episodes, mean return), in one line; None when they agree, or when the
    summary has no such figures (an interrupted run) or the ledger no closed last run."""
    stated = read_summary(run) if last_run is not None else None
    if last_run is None or stated is None or stated.get("episodes") is None:
        return None
    events, episodes, returned = last_run
    found = {"events": events, "episodes": episodes,
             "mean_return": returned // max(episodes, 1)}  # fmt: skip
    for name, value in found.items():
        if stated.get(name) != value:
            return f"summary.json states {name} {stated.get(name)}, the ledger's last run {value}"
    return None


def read_summary(run: Path) -> dict[str, object] | None:
    """The run's summary.json (None if absent); a CorruptLedger if it is not a summary."""
    path = run / SUMMARY
    if not path.is_file():
        return None
    try:
        stated = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        stated = None
    if not isinstance(stated, dict):
        raise CorruptLedger(f"{path}: not a run summary")
    return stated


def recorded_head(run: Path) -> str | None:
    """The ledger head `summary.json` recorded when the run finished (None if absent)."""
    stated = read_summary(run)
    head = stated.get("head") if stated is not None else None
    return head if isinstance(head, str) else None
