"""The `market` command line: simulate into a new run directory, audit it, refuse bad input.

Most tests drive `cli.app` in-process with Typer's CliRunner (run inside `tmp_path`, so
`runs/` lands there); two run the installed `market` console script, where what reaches the
terminal's stderr is the point.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from typer.testing import CliRunner, Result

from agents.fixed import BIDDERS
from cli import app
from ledger import chain
from ledger.disk import MANIFEST, Link
from ledger.units import to_credit
from market.mechanisms import Mechanism
from market.tasks import TASKS

README_LINES = (
    "market simulate --task chain --mechanism ccv --bidder truthful --episodes 1000 --seed 0 "
    "--out runs/chain-ccv",
    "market audit runs/chain-ccv",
    "market simulate --task chain --mechanism v --bidder random --episodes 1000 --seed 0 "
    "--out runs/chain-v",
    "market audit runs/chain-v",
)
MARKET = Path(sys.executable).with_name("market")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MINTED = re.compile(r"([0-9][0-9,]*\.[0-9]+) credit minted by the mechanism")


# helpers ---------------------------------------------------------------------------------


def market(*args: str) -> Result:
    """Run `market ARGS...` in-process."""
    return CliRunner().invoke(app, list(args))


def stdout(result: Result) -> str:
    """What the command printed to stdout, without colour codes."""
    return ANSI.sub("", result.stdout)


def stderr(result: Result) -> str:
    """What the command printed to stderr, without colour codes."""
    return ANSI.sub("", result.stderr)


def assert_no_traceback(result: Result) -> None:
    """Nothing escaped the command but a deliberate exit, and no traceback was printed."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}"
    )
    assert "Traceback" not in result.output


def assert_one_line_error(result: Result, *needles: str) -> str:
    """A non-zero exit with exactly one `error:` line on stderr containing every needle."""
    assert_no_traceback(result)
    assert result.exit_code != 0
    lines = stderr(result).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def verdict(result: Result) -> str:
    """The one line of `market audit` output that carries the verdict."""
    lines = [line for line in stdout(result).splitlines() if "AUDIT" in line]
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def segments(run: Path) -> list[Path]:
    """The segment files of a run's ledger, in sequence order."""
    return sorted((run / "ledger").glob("seg-*.arrow"))


def edit_first_pay(segment: Path) -> None:
    """Add one unit to the first `pay` event of `segment`, re-encoded as valid Arrow IPC."""
    table = ipc.open_file(pa.BufferReader(segment.read_bytes())).read_all()
    amounts = table.column("amount").to_pylist()
    amounts[table.column("kind").to_pylist().index("pay")] += 1
    at = table.schema.get_field_index("amount")
    field = table.schema.field(at)
    table = table.set_column(at, field, pa.array(amounts, field.type))
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression="lz4")) as w:
        w.write_table(table)
    segment.write_bytes(sink.getvalue().to_pybytes())


def rechain(run: Path) -> None:
    """Re-derive every digest and link of the manifest from the segments as they now are."""
    manifest = run / "ledger" / MANIFEST
    prev, lines = chain.GENESIS, []
    for old in map(Link.model_validate_json, manifest.read_text().splitlines()):
        d = chain.digest((run / "ledger" / old.segment).read_bytes())
        link = chain.link(prev, d, old.first_seq, old.last_seq)
        new = old.model_copy(update={"digest": d, "prev": prev, "link": link})
        lines.append(new.model_dump_json())
        prev = new.link
    manifest.write_text("\n".join(lines) + "\n")


# fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished Vickrey run whose ledger spans two committed segments."""
    out = tmp_path_factory.mktemp("shared") / "chain-v"
    result = market(
        "simulate", "--task", "chain", "--mechanism", "v", "--bidder", "random",
        "--episodes", "600", "--seed", "0", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(segments(out)) >= 2
    return out


@pytest.fixture
def run(tmp_path: Path, v_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the shared run, at `runs/chain-v` under the working directory."""
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(v_run, tmp_path / "runs" / "chain-v"))


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so `runs/` lands under `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# the README's command lines --------------------------------------------------------------


def test_readme_command_lines_work_exactly_as_typed(cwd: Path) -> None:
    """The README's four command lines run as typed: CCV audits clean, V reports its mint."""
    results = [market(*shlex.split(line)[1:]) for line in README_LINES]
    for line, result in zip(README_LINES, results, strict=True):
        assert_no_traceback(result)
        assert result.exit_code == 0, f"{line}\n{result.output}"
    ccv, v = verdict(results[1]), verdict(results[3])
    assert ccv.startswith("AUDIT CLEAN") and "every rule holds" in ccv
    assert "minted" not in ccv
    assert v.startswith("AUDIT CLEAN") and "every rule holds" in v
    minted = MINTED.search(v)
    assert minted is not None and float(minted[1].replace(",", "")) > 0
    for result in (results[1], results[3]):
        assert "credit by mechanism" in stdout(result)
        assert any("mechanism" in line and "minted" in line for line in stdout(result).splitlines())
    assert re.search(r"^\W*ccv\W", stdout(results[1]), re.M)
    assert re.search(r"^\W*v\W", stdout(results[3]), re.M)


def test_audit_table_totals_the_vickrey_mint(run: Path) -> None:
    """The audit table's total row carries the same non-zero mint as the verdict."""
    result = market("audit", "runs/chain-v")
    assert result.exit_code == 0
    minted = MINTED.search(verdict(result))
    assert minted is not None
    total = next(line for line in stdout(result).splitlines() if "total" in line)
    assert total.split()[-2] == minted[1] != "0.000000"


# simulate --------------------------------------------------------------------------------


def test_simulate_without_options_writes_a_new_run_each_time(cwd: Path) -> None:
    """`market simulate` alone writes a new run under runs/, says where, and never reuses it."""
    first = market("simulate")
    assert first.exit_code == 0, first.output
    where = re.search(r"run written to (\S+)", stdout(first))
    assert where is not None and where[1] == "runs/chain-ccv-truthful-s0"
    before = snapshot(cwd / where[1])
    second = market("simulate")
    assert second.exit_code == 0, second.output
    again = re.search(r"run written to (\S+)", stdout(second))
    assert again is not None and again[1] != where[1]
    assert again[1].startswith("runs/")
    assert snapshot(cwd / where[1]) == before
    for path in (where[1], again[1]):
        assert (cwd / path / "ledger" / MANIFEST).is_file()
        assert json.loads((cwd / path / "summary.json").read_text())["audit"] == "clean"


def test_simulate_summary_reports_events_rate_episodes_return_wealth_and_verdict(
    cwd: Path,
) -> None:
    """The summary shows events, events/s, episodes, mean return, wealth per account, verdict."""
    result = market("simulate", "--episodes", "25", "--out", "runs/small")
    assert result.exit_code == 0, result.output
    text = stdout(result)
    summary = json.loads((cwd / "runs" / "small" / "summary.json").read_text())
    lines = text.splitlines()

    def row(label: str) -> str:
        return next(line for line in lines if re.search(rf"\b{re.escape(label)}\b", line))

    assert f"{summary['events']:,}" in row("events written")
    assert re.search(r"[0-9]", row("events/s"))
    assert "25" in row("episodes")
    assert f"{to_credit(summary['mean_return']):.4f} credit" in row("mean return")
    assert "final wealth" in text
    assert len(summary["balances"]) >= 4
    for account, units in summary["balances"].items():
        assert f"{to_credit(units):.6f}" in row(account)
    assert "AUDIT CLEAN" in text


def test_simulate_refuses_an_out_that_holds_a_run(run: Path) -> None:
    """`--out` at an existing run is a one-line error and leaves every byte of it as it was."""
    before = snapshot(run)
    result = market("simulate", "--episodes", "3", "--out", "runs/chain-v")
    assert_one_line_error(result, "runs/chain-v", "already holds a run")
    assert stdout(result) == ""
    assert snapshot(run) == before


def test_same_seed_gives_identical_ledger_bytes(cwd: Path) -> None:
    """Two runs with the same options write byte-identical ledgers; another seed does not."""
    options = ("simulate", "--mechanism", "v", "--bidder", "random", "--episodes", "40")
    for seed, out in (("7", "a"), ("7", "b"), ("8", "c")):
        result = market(*options, "--seed", seed, "--out", f"runs/{out}")
        assert result.exit_code == 0, result.output
    a, b, c = (snapshot(cwd / "runs" / out / "ledger") for out in "abc")
    assert any(name.startswith("seg-") for name in a)
    assert a == b
    assert a != c


def test_both_kernels_write_the_same_ledger_bytes(cwd: Path) -> None:
    """`--kernel episodes` and `--kernel rounds` give byte-identical ledgers for one config."""
    options = ("simulate", "--mechanism", "v", "--bidder", "random", "--episodes", "60")
    for kernel in ("episodes", "rounds"):
        result = market(
            *options, "--concurrency", "8", "--kernel", kernel, "--out", f"runs/{kernel}"
        )
        assert result.exit_code == 0, result.output
        assert "AUDIT CLEAN" in stdout(result)
    by_episodes, by_rounds = (snapshot(cwd / "runs" / k / "ledger") for k in ("episodes", "rounds"))
    assert any(name.startswith("seg-") for name in by_rounds)
    assert by_rounds == by_episodes


# bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [
        ("--task", "nope", ("'nope'", ", ".join(TASKS))),
        ("--mechanism", "nope", ("'nope'", ", ".join(m.value for m in Mechanism))),
        ("--bidder", "nope", ("'nope'", ", ".join(BIDDERS))),
        ("--episodes", "0", ("episodes", "1")),
        ("--episodes", "-5", ("episodes", "1")),
        ("--gamma", "1.5", ("gamma", "1")),
        ("--gamma", "0", ("gamma", "0")),
        ("--gamma", "-0.5", ("gamma", "0")),
        ("--kernel", "nope", ("'nope'", "auto, episodes, rounds")),
    ],
)
def test_simulate_bad_option_is_a_one_line_error(
    cwd: Path, option: str, value: str, needles: tuple[str, ...]
) -> None:
    """A bad simulate option is one error line naming it (and the choices), and writes nothing."""
    result = market("simulate", option, value)
    assert_one_line_error(result, *needles)
    assert not (cwd / "runs").exists()


def test_simulate_non_numeric_episodes_exits_non_zero_without_traceback(cwd: Path) -> None:
    """A non-numeric --episodes is refused by the parser: non-zero, names the option, no run."""
    result = market("simulate", "--episodes", "abc")
    assert_no_traceback(result)
    assert result.exit_code != 0
    assert "--episodes" in stderr(result)
    assert not (cwd / "runs").exists()


def test_simulate_non_numeric_episodes_is_a_one_line_error(tmp_path: Path) -> None:
    """The installed `market` answers a non-numeric --episodes with one line naming the option."""
    proc = subprocess.run(
        [str(MARKET), "simulate", "--episodes", "abc"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--episodes" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args",
    [("simulate", "--task", "[/x]"), ("simulate", "--bidder", "[red]x"), ("audit", "runs/[/x]")],
)
def test_bad_value_is_echoed_verbatim(cwd: Path, args: tuple[str, ...]) -> None:
    """The error line repeats the bad value exactly as typed, whatever characters it holds."""
    assert_one_line_error(market(*args), args[-1])


def test_simulate_into_an_out_with_brackets_audits_clean(cwd: Path) -> None:
    """A run directory whose name holds brackets is written, audited and reported like any other."""
    result = market("simulate", "--episodes", "3", "--out", "runs/exp[1]")
    assert_no_traceback(result)
    assert result.exit_code == 0
    assert "AUDIT CLEAN" in stdout(result)


def test_unknown_task_from_the_console_script_is_one_stderr_line(tmp_path: Path) -> None:
    """The installed `market` script answers an unknown task with one stderr line, no traceback."""
    proc = subprocess.run(
        [str(MARKET), "simulate", "--task", "nope"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: unknown task 'nope'; choose one of: {', '.join(TASKS)}, or gym:ID for a "
        "Gymnasium env (`market tasks`)"
    ]
    assert not (tmp_path / "runs").exists()


# audit: runs that cannot be read ---------------------------------------------------------


def test_audit_missing_directory_is_a_one_line_error(cwd: Path) -> None:
    """Auditing a path that does not exist is one error line naming the path."""
    assert_one_line_error(market("audit", "runs/nowhere"), "runs/nowhere", "no such run")


def test_audit_directory_that_is_not_a_run_is_a_one_line_error(cwd: Path) -> None:
    """Auditing a directory with no ledger is one error line saying it is not a run."""
    (cwd / "notarun").mkdir()
    (cwd / "notarun" / "notes.txt").write_text("hello\n")
    assert_one_line_error(market("audit", "notarun"), "notarun", "not a run directory")


def test_audit_garbage_line_in_the_manifest_is_a_one_line_error(run: Path) -> None:
    """A garbage line in the middle of chain.jsonl is one error line naming the file and line."""
    manifest = run / "ledger" / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    manifest.write_text("".join([lines[0], "}garbage{ not json\n", *lines[1:]]))
    assert_one_line_error(market("audit", "runs/chain-v"), MANIFEST, "line 2", "not a chain record")


def test_audit_missing_committed_segment_is_a_one_line_error(run: Path) -> None:
    """A committed segment that was deleted is one error line naming it."""
    gone = segments(run)[-1]
    gone.unlink()
    assert_one_line_error(market("audit", "runs/chain-v"), gone.name, "missing")


def test_audit_truncated_segment_fails_naming_the_chain(run: Path) -> None:
    """A truncated committed segment fails the audit, naming the chain rule or a corrupt ledger."""
    segment = segments(run)[-1]
    segment.write_bytes(segment.read_bytes()[:-100])
    result = market("audit", "runs/chain-v")
    assert_no_traceback(result)
    assert result.exit_code != 0
    assert re.search(r"chain|corrupt", result.output, re.I)


def test_audit_truncated_segment_prints_no_traceback_from_the_console_script(run: Path) -> None:
    """The installed `market audit` on a truncated segment exits non-zero with no traceback."""
    segment = segments(run)[0]
    segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 2])
    proc = subprocess.run(
        [str(MARKET), "audit", "runs/chain-v"],
        cwd=run.parent.parent, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert re.search(r"chain|corrupt", proc.stdout + proc.stderr, re.I)


# audit: runs that were tampered with -----------------------------------------------------


def test_audit_edited_event_breaks_the_chain(run: Path) -> None:
    """An event edited in its stored segment fails the audit on the chain rule, naming it."""
    segment = segments(run)[-1]
    edit_first_pay(segment)
    result = market("audit", "runs/chain-v")
    assert_no_traceback(result)
    assert result.exit_code != 0
    line = verdict(result)
    assert line.startswith("AUDIT FAILED")
    assert "chain" in line and segment.name in line


def test_audit_edited_and_rechained_event_breaks_the_price_rule(run: Path) -> None:
    """An edited payment whose chain was forged to match fails the audit on the price rule."""
    edit_first_pay(segments(run)[-1])
    rechain(run)
    (run / "summary.json").unlink()  # without the recorded head, the rules alone must catch it
    result = market("audit", "runs/chain-v")
    assert_no_traceback(result)
    assert result.exit_code != 0
    line = verdict(result)
    assert line.startswith("AUDIT FAILED")
    assert re.search(r"seq [0-9]+: price: expected [0-9]+ under v, found [0-9]+", line)


def test_audit_forged_chain_differs_from_the_recorded_head(run: Path) -> None:
    """A chain rebuilt after an edit ends at another head than the one summary.json recorded."""
    edit_first_pay(segments(run)[-1])
    rechain(run)
    result = market("audit", "runs/chain-v")
    assert result.exit_code != 0
    assert re.search(r"chain: expected the recorded head [0-9a-f]{16}", verdict(result))


def test_audit_any_flipped_byte_fails_naming_the_chain_and_segment(run: Path) -> None:
    """A byte flipped anywhere in a stored segment fails the audit, naming chain and segment."""
    segment = segments(run)[-1]
    original = segment.read_bytes()
    for k in range(1, 16):
        data = bytearray(original)
        data[len(data) * k // 16] ^= 0xFF
        segment.write_bytes(bytes(data))
        result = market("audit", "runs/chain-v")
        assert_no_traceback(result)
        assert result.exit_code != 0
        assert "chain" in result.output and segment.name in result.output


# audit: torn tails -----------------------------------------------------------------------


def tear_manifest(run: Path) -> None:
    """Append half a chain record to the manifest, as a writer killed mid-line leaves it."""
    with open(run / "ledger" / MANIFEST, "ab") as f:
        f.write(b'{"segment":"seg-0000')


def stray_segment(run: Path) -> None:
    """Leave a segment file that no manifest line commits."""
    (run / "ledger" / "seg-999999999999.arrow").write_bytes(b"\0junk")


@pytest.mark.parametrize(
    ("tear", "note"),
    [(tear_manifest, "half-written"), (stray_segment, "never committed")],
    ids=["half-written-line", "uncommitted-segment"],
)
def test_audit_reports_a_torn_tail_and_the_committed_run_still_audits(
    run: Path, tear: Callable[[Path], None], note: str
) -> None:
    """A torn tail is reported as torn, the committed run still audits clean, nothing changes."""
    tear(run)
    before = snapshot(run)
    result = market("audit", "runs/chain-v")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert verdict(result).startswith("AUDIT CLEAN")
    assert "torn" in verdict(result)
    assert any("torn" in line and note in line for line in stdout(result).splitlines())
    assert snapshot(run) == before


def test_audit_fails_when_committed_history_is_cut_from_the_manifest(run: Path) -> None:
    """Dropping the manifest's last committed lines is caught: the head no longer matches."""
    manifest = run / "ledger" / MANIFEST
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(b"".join(lines[:-1]))
    result = market("audit", "runs/chain-v")
    assert_no_traceback(result)
    assert result.exit_code != 0
    assert "recorded head" in verdict(result)


def test_audit_fails_on_an_emptied_manifest_without_a_summary(run: Path) -> None:
    """A ledger with no committed events is never a clean audit, summary or not."""
    (run / "ledger" / MANIFEST).write_bytes(b"")
    (run / "summary.json").unlink()
    result = market("audit", "runs/chain-v")
    assert result.exit_code != 0
    assert "empty ledger" in verdict(result)
