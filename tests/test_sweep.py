"""`market sweep`: axes times seeds, resumable, one Hive-partitioned dataset; Ray = local."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from simulation.sweep import parse_seeds, results

BASE = ["--set", "task=chain", "--set", "bidder=random", "--set", "episodes=12"]


def sweep(out: Path, *args: str) -> tuple[int, str, str]:
    """`market sweep` over mechanisms ccv and bb into `out`: exit code, stdout, stderr."""
    result = CliRunner().invoke(
        app, ["sweep", *BASE, "--mechanisms", "ccv,bb", "--out", str(out), *args]
    )
    return result.exit_code, result.output, result.stderr


def ledgers(out: Path) -> dict[str, bytes]:
    """Every ledger file of every run of a sweep, by its path inside the sweep."""
    return {
        str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").glob("**/ledger/*"))
    }


def test_a_sweep_runs_every_cell_into_one_partitioned_dataset(tmp_path: Path) -> None:
    """2 mechanisms x 2 seeds: four audited runs, their rows under mechanism=/seed= paths."""
    code, out, _ = sweep(tmp_path / "s", "--seeds", "0-1", "--workers", "2")
    assert code == 0, out
    table = results(tmp_path / "s")
    assert sorted(table.select("mechanism", "seed").rows()) == [
        ("bb", 0), ("bb", 1), ("ccv", 0), ("ccv", 1)
    ]  # fmt: skip
    assert table["audit_clean"].all() and (table["episodes"] == 12).all()
    part = tmp_path / "s" / "results" / "mechanism=ccv" / "seed=1" / "part-0.parquet"
    assert part.is_file()
    assert "final return per cell" in out


def test_a_second_run_skips_finished_cells_and_redoes_unfinished_ones(tmp_path: Path) -> None:
    """Finished runs are left as they are; a cell without a result is run again from scratch;
    new seeds are added."""
    out = tmp_path / "s"
    assert sweep(out, "--seeds", "0")[0] == 0
    before = ledgers(out)
    (out / "results" / "mechanism=bb" / "seed=0" / "part-0.parquet").unlink()  # as if cut off
    code, text, _ = sweep(out, "--seeds", "0-1")
    assert code == 0, text
    assert "4 runs, 1 already finished, 3 to run" in text
    after = ledgers(out)
    assert {k: after[k] for k in before} == before  # the same seed and settings, same bytes
    assert len(results(out)) == 4


def test_a_sweep_directory_keeps_its_base_settings(tmp_path: Path) -> None:
    """Resuming with other base settings is a one-line error that runs nothing."""
    out = tmp_path / "s"
    assert sweep(out, "--seeds", "0")[0] == 0
    result = CliRunner().invoke(
        app, ["sweep", "--set", "task=duality", "--mechanisms", "ccv", "--out", str(out)]
    )
    assert result.exit_code != 0 and "other base settings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "spark"], "unknown backend"),
        (["--seeds", "a-b"], "--seeds"),
        (["--seeds", "3-1"], "--seeds"),
        (["--grid", "ppo.entropy=0.1,0.2"], "unknown setting 'ppo.entropy'"),
        (["--grid", "nothing"], "expected KEY=V1,V2"),
    ],
)
def test_bad_sweeps_are_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    """A bad backend, seed range or axis: one line, non-zero, no run made."""
    code, _, err = sweep(tmp_path / "s", *args)
    assert code != 0 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s" / "runs").exists()


def test_seed_lists_and_ranges() -> None:
    """0-2,5 is 0, 1, 2, 5; repeats count once."""
    assert parse_seeds("0-2,5") == (0, 1, 2, 5)
    assert parse_seeds("4,4") == (4,)


def test_a_ray_sweep_writes_the_local_pools_ledgers(tmp_path: Path) -> None:
    """The same sweep as Ray tasks on a local Ray instance: identical ledgers, same rows."""
    pytest.importorskip("ray")
    assert sweep(tmp_path / "local", "--seeds", "0", "--workers", "2")[0] == 0
    code, out, _ = sweep(tmp_path / "ray", "--seeds", "0", "--backend", "ray")
    assert code == 0, out
    local, on_ray = ledgers(tmp_path / "local"), ledgers(tmp_path / "ray")
    assert local and local == on_ray
    columns = ["mechanism", "seed", "final_return", "events", "episodes"]
    assert (
        results(tmp_path / "ray")
        .select(columns)
        .sort("mechanism")
        .equals(results(tmp_path / "local").select(columns).sort("mechanism"))
    )
    assert isinstance(results(tmp_path / "ray"), pl.DataFrame)
