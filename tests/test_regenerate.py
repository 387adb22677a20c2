"""experiments/regenerate.py: the generated tables are re-derived from the saved run outputs,
and a changed number anywhere (a table, the page it is spliced into, the saved data) fails
the check. The fixture tests/data/results/ is a hand-made Chain run of two seeds whose
figures are worked out by hand below."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium
import regenerate

FIXTURE = Path(__file__).resolve().parent / "data" / "results"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A copy of the fixture's results directory and its page, to change."""
    shutil.copytree(FIXTURE, tmp_path / "results")
    shutil.copy(FIXTURE.with_suffix(".md"), tmp_path / "results.md")
    return tmp_path / "results"


def check(results: Path) -> int:
    return int(regenerate.main(["--check", "--results", str(results)]))


def test_the_committed_fixture_passes_the_check() -> None:
    """The committed tables and page are exactly what the committed saved data derive."""
    assert check(FIXTURE) == 0


def test_the_committed_results_match_their_saved_data() -> None:
    """docs/results/ and the tables spliced into docs/results.md are what docs/results/data
    derive: nobody edited a generated number by hand."""
    assert check(FIXTURE.parents[2] / "docs" / "results") == 0


def test_the_peer_ratios_are_the_hand_computed_ones() -> None:
    """Seed 0's train return first reaches 0.75 in epoch 1 (8,192 env steps, 2 s), seed 1's
    in epoch 3 (16,384, 8 s): median 12,288 steps and 5 s, so the peer's one seed at
    712,704 steps and 266.8 s is 58.00x and 53.36x. Only seed 0's 5-epoch mean reaches it
    (epochs 1-5, 24,576 steps, 6 s): 753,664 / 24,576 = 30.67x, 282.5 / 6 = 47.08x."""
    table = pl.read_csv(FIXTURE / "tabular-peers.csv", infer_schema=False)
    assert table.select(
        "ours: seeds that met it", "ours: env steps", "ours: seconds",
        "env steps, peer / our median", "seconds, peer / our median",
    ).rows() == [
        ("2/2", "12,288 [8,192, 16,384]", "5.0 [2.0, 8.0]", "58.00x", "53.36x"),
        ("1/2", "24,576", "6.0", "30.67x", "47.08x"),
    ]  # fmt: skip
    assert set(table["peer seeds"]) == {"1 (one seed, not a distribution)"}


@pytest.mark.parametrize(
    "changed", ["tabular-peers.md", "tabular-peers.csv", "../results.md", "tabular.md"]
)
def test_a_changed_number_in_a_generated_file_fails_the_check(
    results: Path, changed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing a number in a table, its CSV or the page it is spliced into: exit 1, with one
    line naming the file."""
    path = (results / changed).resolve()
    text = path.read_text(encoding="utf-8")
    number = "58.00x" if "peers" in changed or changed.endswith("results.md") else "10,000"
    assert number in text
    path.write_text(text.replace(number, number.replace("0", "1", 1), 1), encoding="utf-8")
    assert check(results) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path.name in err


def test_a_changed_saved_output_fails_the_check(results: Path) -> None:
    """Changing the saved data (seed 1 reaches 0.75 one epoch later) changes the tables."""
    saved = results / "data" / "tabular" / "epochs.parquet"
    epochs = pl.read_parquet(saved)
    late = (pl.col("seed") == 1) & (pl.col("epoch") == 3)
    epochs.with_columns(pl.when(late).then(0.7).otherwise("train_return").alias("train_return"))\
        .write_parquet(saved)  # fmt: skip
    assert check(results) == 1


def test_writing_restores_what_the_check_expects(results: Path) -> None:
    """Without --check the files are rewritten from the saved data, and the check passes."""
    (results / "tabular.md").write_text("edited by hand\n", encoding="utf-8")
    (results / "tabular.csv").unlink()
    assert regenerate.main(["--results", str(results), "--no-plots"]) == 0
    assert check(results) == 0


def test_a_table_no_saved_data_derive_fails_the_check(results: Path) -> None:
    """A stray table in the results directory is a mismatch, not something to ignore."""
    (results / "orphan.md").write_text("| a |\n|---|\n| 1 |\n", encoding="utf-8")
    assert check(results) == 1


def spoil(results: Path, how: str) -> list[str]:
    """Spoil a copy of the fixture `how`; the arguments that then reach the bad input."""
    data = results / "data" / "tabular"
    if how == "no data":
        return ["--results", str(results.parent / "none")]
    if how == "unknown name":
        return ["--results", str(results), "nothing"]
    if how == "unknown experiment":
        (data / "source.json").write_text('{"experiment": "bogus"}', encoding="utf-8")
    if how == "missing table":
        (data / "epochs.parquet").unlink()
    if how == "stray marker":
        page = results.with_suffix(".md")
        marker = "<!-- results:nowhere -->\n<!-- /results:nowhere -->\n"
        page.write_text(page.read_text(encoding="utf-8") + marker, encoding="utf-8")
    return ["--results", str(results)]


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no data", "no saved data directory"),
        ("unknown name", "no saved data for nothing"),
        ("unknown experiment", "unknown experiment 'bogus'"),
        ("missing table", "no such saved table"),
        ("stray marker", "names no generated table"),
    ],
)
@pytest.mark.parametrize("mode", [["--check"], ["--no-plots"]])
def test_bad_input_is_one_line_and_a_non_zero_exit(
    results: Path, how: str, message: str, mode: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing data directory, an unknown name or experiment, a missing saved table or a
    marker naming no table: one line on stderr and exit 2, checking or writing."""
    assert regenerate.main([*mode, *spoil(results, how)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_interval_is_the_mean_and_a_bootstrap_interval_around_it() -> None:
    """`interval` gives the mean and a 95% bootstrap interval that holds it, the same on
    every call (a fixed resampling seed), narrower when more seeds agree; one value when
    all agree, `-` for none."""
    from generated import interval

    def parts(text: str) -> tuple[float, float, float]:
        mean, rest = text.split(" [")
        low, high = rest.rstrip("]").split(", ")
        return float(mean), float(low), float(high)

    few = pl.Series([0.0, 1.0] * 3)
    many = pl.Series([0.0, 1.0] * 30)
    mean, low, high = parts(interval(few, "{:.3f}"))
    assert mean == 0.5 and 0.0 <= low < 0.5 < high <= 1.0
    assert interval(few, "{:.3f}") == interval(few, "{:.3f}")
    _, low_many, high_many = parts(interval(many, "{:.3f}"))
    assert high_many - low_many < (high - low) / 2
    assert interval(pl.Series([3.0, 3.0])) == "3"
    assert interval(pl.Series([None], dtype=pl.Float64)) == "-"
