"""The README's `market ...` commands run, in order, on a fresh directory: they cannot rot.

Each command runs as the installed `market` console script, in a temporary directory (so
`runs/` and `sweeps/` land there), with its own cache (`MARKET_CACHE`) and every budget cut
by `MARKET_BUDGET_SCALE`: the commands are the README's, only shorter.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from agents.budget import BUDGET_SCALE

README = Path(__file__).resolve().parents[1] / "README.md"
MARKET = Path(sys.executable).with_name("market")
SCALE = 0.001
"""The README's budgets, cut a thousand times (a million env steps run a thousand)."""
SKIPPED = {
    "--address": "joins a running Ray cluster (`--address auto`, say), which a fresh clone "
    "does not have; without it `--backend ray` starts Ray locally, and that line runs",
}
"""Commands left out, by one of their words, with the reason."""
CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_commands(text: str) -> list[str]:
    """The `market ...` commands of `text`'s code blocks, in order: lines joined by `&&`
    split, comments dropped, other commands (pip, pytest, python ...) left out."""
    commands = []
    for block in CODE_BLOCK.findall(text):
        for line in block.splitlines():
            for part in line.split("&&"):
                if part.split()[:1] == ["market"]:  # a command (prose may hold lone quotes)
                    commands.append(shlex.join(shlex.split(part, comments=True)))
    return commands


def test_the_readme_commands_are_found_in_order() -> None:
    """The extraction finds the README's commands, splits `&&` and drops comments."""
    text = "x\n```\npip install x\nmarket a --out r  # c\nmarket b r && market c r\n```\n"
    assert readme_commands(text) == ["market a --out r", "market b r", "market c r"]
    found = readme_commands(README.read_text(encoding="utf-8"))
    assert found[0] == "market simulate" and len(found) > 30


def test_every_readme_command_runs_in_order_with_a_cut_budget(tmp_path: Path) -> None:
    """Every README `market` command exits 0 after the ones before it, on a fresh directory;
    the runs made under the cut budget record it."""
    clone = tmp_path / "clone"
    clone.mkdir()
    env = {
        **os.environ,
        BUDGET_SCALE: str(SCALE),
        "MARKET_CACHE": str(tmp_path / "cache"),
        "COLUMNS": "200",
    }
    for command in readme_commands(README.read_text(encoding="utf-8")):
        words = shlex.split(command)
        if any(word.split("=")[0] in SKIPPED for word in words):
            continue
        done = subprocess.run(
            [str(MARKET), *words[1:]],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"README line failed (exit {done.returncode}): {command}\n"
            f"stderr:\n{done.stderr[-3000:]}\nstdout:\n{done.stdout[-2000:]}"
        )
    recorded = tomllib.loads((clone / "runs/chain/simulation.toml").read_text(encoding="utf-8"))
    assert recorded["budget_scale"] == SCALE and recorded["steps"] == 1000
