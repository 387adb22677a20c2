"""The `market` command line: simulate a society into an audited ledger, and audit it."""

from __future__ import annotations

import os

from market.allocator import keep_polars_freed_memory

keep_polars_freed_memory(os.environ)  # first: Polars' allocator reads it when Polars loads

import inspect
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from agents.budget import BUDGET_SCALE
from analyses.wealth import wealth
from ledger.disk import DiskLedger
from ledger.errors import LedgerError
from ledger.signing import Signer, Verifier, generate
from ledger.units import to_credit
from market.allocator import keep_freed_memory
from market.anchors import Anchors, full_head
from market.audit import AuditReport, audit
from market.core import EpisodeResult
from simulation import proofs, rundir
from simulation.config import resolve
from simulation.flags import (
    FLAGS,
    default_text,
    flag,
    refuse_for_variant,
    refuse_with_resume,
    settings,
    value_type,
)
from simulation.runner import OPTION_TASKS, STORAGE_FAILED, Finished, Prepared, prepare

if TYPE_CHECKING:
    from simulation.sweep import Sweep


class _HelpWithoutValue:
    """--help shows no `<bool>` value in the help (it takes none)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_HelpWithoutValue, TyperCommand):
    """A command whose flags (and --help) show no `<bool>` value in their help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""


class Group(_HelpWithoutValue, TyperGroup):
    """The `market` group, its --help shown without a value too."""


app = typer.Typer(
    cls=Group,
    help="An event-sourced economic simulation engine for decentralized RL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)
T = TypeVar("T")
USER_ERRORS = (ValueError, LedgerError, OSError)
CORRUPT = (pl.exceptions.PolarsError, pa.ArrowException)
"""What reading a damaged file can raise before the chain check names the damage."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error (user text is never read as markup) and exit non-zero."""
    err.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(action: Callable[[], T]) -> T:
    """Run `action`, turning anything a user can cause into a one-line error."""
    try:
        return action()
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        fail(f"{where}: {message} (got {first['input']!r})" if where else message)
    except CORRUPT as e:
        fail(f"unreadable ledger: {_one_line(e)}")
    except USER_ERRORS as e:
        fail(_one_line(e))


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


SETTINGS = "Settings and output"


def simulate_cmd(
    preset: str | None,
    config: Path | None,
    assignments: list[str] | None,
    out: Path | None,
    resume: Path | None,
    audit: bool,
    sign_key: Path | None,
    **flags: Any,
) -> None:
    """Run a society into a new run directory (or continue one with --resume), then audit it.

    Settings come in layers: a --preset, then a --config file, then the flags given, then
    every --set; the resolved config is written to the run as simulation.toml.
    """
    given = {n for n, v in flags.items() if v is not None and v is not False}
    given |= {k for k, v in (("preset", preset), ("config", config), ("set", assignments)) if v}
    if resume is not None:
        guarded(lambda: refuse_with_resume(given))
    sim = guarded(lambda: resolve(preset, config, settings(flags), assignments))
    guarded(lambda: refuse_for_variant(given, sim.variant))
    if sim.budget_scale is not None:
        err.print(f"budgets cut by {BUDGET_SCALE}={sim.budget_scale:g}", style="yellow")
    if sim.task in OPTION_TASKS:
        from agents.option_ppo import ensure_options, rich_progress
        from market.two_rooms import options_path

        if not options_path().exists():
            with rich_progress() as progress:  # the first Two Rooms run trains its options
                guarded(lambda: ensure_options(progress=progress))
    signer = None if sign_key is None else guarded(lambda: Signer(sign_key))
    if resume is not None and signer is None and guarded(lambda: _signed(resume)):
        fail(f"{resume}'s heads are signed: give --sign-key KEY to go on signing them")
    with interrupted(None):
        prepared = guarded(lambda: prepare(sim, out, resume))
    prepared.ledger.signer = signer
    if prepared.resumed_at is not None:
        console.print(
            Text.assemble("resuming ", (str(prepared.run), "bold"),
                          f" at event {prepared.resumed_at:,}: {_budget(prepared)} more")
        )  # fmt: skip
    with interrupted(prepared):
        finished = _execute_with_progress(prepared, audit)
    _print_finished(finished, prepared)


def _option(name: str) -> inspect.Parameter:
    """`market simulate`'s option for setting `name` (`simulation.flags.FLAGS`)."""
    row, kind = FLAGS[name], value_type(name)
    decls = [f"{flag(name)}/--no-{flag(name)[2:]}" if row.negative else flag(name)]
    option = typer.Option(
        *decls, help=row.help, show_default=default_text(name) or False,
        rich_help_panel=row.panel,
    )  # fmt: skip
    switch = kind is bool and not row.negative
    annotation = Annotated[kind if switch else kind | None, option]  # type: ignore[valid-type]
    return inspect.Parameter(name, _KEYWORD, default=False if switch else None,
                             annotation=annotation)  # fmt: skip


_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_OWN = [
    ("preset", str | None, None,
     typer.Option(help="Start from a named experiment (`market presets`).",
                  rich_help_panel=SETTINGS)),
    ("config", Path | None, None,
     typer.Option("--config", help="A TOML config (a run's simulation.toml, say).",
                  rich_help_panel=SETTINGS)),
    ("assignments", list[str] | None, None,
     typer.Option("--set", help="Override one setting, e.g. --set ppo.entropy_coef=0.05.",
                  rich_help_panel=SETTINGS)),
    ("out", Path | None, None,
     typer.Option(help="A new run directory.", show_default="runs/TASK-MECHANISM-BIDDER-sSEED",
                  rich_help_panel=SETTINGS)),
    ("resume", Path | None, None,
     typer.Option(help="Continue a run with its own settings (--steps or --episodes more; a "
                  "learning run from its last snapshot), reading only the ledger's tail.",
                  rich_help_panel=SETTINGS)),
    ("audit", bool, True,
     typer.Option("--audit/--no-audit", help="Audit the ledger when the run ends (streaming, "
                  "in bounded memory); --no-audit skips it, for a run audited later with "
                  "`market audit RUN`.", rich_help_panel=SETTINGS)),
    ("sign_key", Path | None, None,
     typer.Option(help="A private key (`market keygen`): sign the ledger's head after every "
                  "commit, for `market audit --verify-key`.", rich_help_panel=SETTINGS)),
]  # fmt: skip
"""The options of `market simulate` that are not settings: where they come from and go."""
simulate_cmd.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_option(name) for name in FLAGS]
    + [
        inspect.Parameter(name, _KEYWORD, default=default, annotation=Annotated[kind, option])
        for name, kind, default, option in _OWN
    ]
)
app.command("simulate", cls=Command)(simulate_cmd)


def _signed(run: Path) -> bool:
    """Whether the last committed head of `run`'s ledger is signed."""
    links = rundir.open_run_ledger(run).links
    return bool(links) and links[-1].signature is not None


def _budget(prepared: Prepared) -> str:
    if prepared.steps is not None:
        return f"{prepared.steps:,} env steps"
    return f"{prepared.episodes or 0:,} episodes"


@contextmanager
def interrupted(prepared: Prepared | None) -> Iterator[None]:
    """On Ctrl-C, say in one line what was kept and how to go on, then exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        said = (
            prepared.interrupted()
            if prepared is not None
            else ("interrupted while preparing the run: nothing was run")
        )
        err.print(Text(said, style="yellow"), soft_wrap=True)
        raise typer.Exit(130) from None


@contextmanager
def storage_failed(prepared: Prepared) -> Iterator[None]:
    """On an OSError while the run executes (a full disk, a failing device), say in one
    line the error, what the ledger kept and how to go on, then exit 2 (docs/ledger.md,
    "Fault injection")."""
    try:
        yield
    except OSError as raised:
        e = raised
        while e.filename is None and isinstance(e.__cause__, OSError):
            e = e.__cause__  # SimPy re-raises a process's error without its file name
        fail(prepared.stopped_by(f"{_one_line(e)}; the run stopped", STORAGE_FAILED))


def _print_finished(finished: Finished, prepared: Prepared) -> None:
    """Print a finished run's summary, wealth and audit verdict; exit 1 if it is not clean."""
    run, ledger, summary, report = finished.run, finished.ledger, finished.summary, finished.report
    console.print(Text.assemble("run written to ", (str(run), "bold")))
    table = Table(title="summary", show_header=False)
    if prepared.resumed_at is not None:
        table.add_row("resumed", f"at event {prepared.resumed_at:,}")
    table.add_row("events written", f"{summary.events:,}")
    table.add_row("events/s", f"{summary.events / max(summary.seconds, 1e-9):,.0f}")
    steps_of = f" of {prepared.steps:,}" if prepared.steps is not None else ""
    by_episodes = prepared.steps is None and prepared.episodes is not None
    episodes_of = f" of {prepared.episodes:,}" if by_episodes else ""
    table.add_row("env steps", f"{summary.steps:,}{steps_of}")
    table.add_row("episodes", f"{summary.episodes:,}{episodes_of}")
    table.add_row("mean return", f"{to_credit(summary.mean_return):.4f} credit")
    if summary.stopped is not None:
        table.add_row("stopped early", Text(summary.stopped, style="bold yellow"))
    verdict = "skipped (--no-audit)" if report is None else "clean" if report.ok else "failed"
    table.add_row("closing audit", verdict)
    console.print(table)
    head = proofs.head_of(ledger)
    signed = "unsigned" if head["signature"] is None else f"signature {head['signature']}"
    console.print(
        Text.assemble("ledger head ", (head["root"], "bold"),
                      f"  ({summary.episodes:,} episodes, {head['events']:,} events; {signed})"),
        soft_wrap=True,
    )  # fmt: skip
    console.print(_wealth_table(wealth(ledger.scan())))
    if summary.stopped is not None:
        budget = (
            f"{summary.steps:,}{steps_of} env steps"
            if steps_of
            else (f"{summary.episodes:,}{episodes_of} episodes")
        )
        console.print(
            Text.assemble(("STOPPED EARLY", "bold yellow"), f" after {budget}: {summary.stopped}"),
            soft_wrap=True,
        )
    if report is None:
        console.print(
            Text.assemble(
                ("NOT AUDITED", "bold yellow"), f" (--no-audit): run `market audit {run}`"
            )
        )
        return
    console.print(_verdict(report), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command("audit", cls=Command)
def audit_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    head: Annotated[
        str | None,
        typer.Option(
            help="The ledger head you kept when the run finished (all 64 hex digits, or at "
            "least the first 16): the ledger must end there, or pass through it and go on.",
            show_default="the head summary.json recorded",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="A head you kept earlier: the ledger must extend it by appending only "
            "(checked with a Merkle consistency proof).",
        ),
    ] = None,
    verify_key: Annotated[
        Path | None,
        typer.Option(
            help="A public key (`market keygen`): every committed head must be "
            "signed with its private key."
        ),
    ] = None,
    unanchored: Annotated[
        bool,
        typer.Option(
            "--unanchored",
            help="Accept a run that no head vouches for (no summary.json or no head in it, and "
            "no --head): the rules alone cannot catch a consistent rewrite.",
        ),
    ] = False,
) -> None:
    """Check a run's ledger from its stored events alone; exit 0 only when it is clean."""
    ledger = guarded(lambda: rundir.open_run_ledger(run))
    anchors = _anchors(run, ledger, head, since, verify_key)
    with _progress() as progress:
        bar = progress.add_task("auditing (events)", total=ledger.next_seq)

        def done(events: int) -> None:
            progress.update(bar, completed=events)

        report = guarded(lambda: audit(ledger, anchors, progress=done))
    stated = guarded(
        lambda: rundir.summary_disagrees(run, report.last_run if report.closed else None)
    )
    _show_audit(report, stated, anchors.head is None and anchors.since is None, unanchored)


def _show_audit(
    report: AuditReport, stated: str | None, vouched_by_none: bool, unanchored: bool
) -> None:
    """The verdict and, for a clean ledger, its tables; exit 1 unless the run is clean, its
    summary agrees (`stated`: how it does not), and a head vouches for it (or `unanchored`)."""
    if report.ok and stated is not None:
        console.print(
            Text.assemble(("AUDIT FAILED", "bold red"), f" summary: {stated}"), soft_wrap=True
        )
        raise typer.Exit(1)
    console.print(_verdict(report), soft_wrap=True)
    for note in report.torn_tail:
        console.print(f"[yellow]torn tail:[/] {note}", soft_wrap=True)
    if not report.ok:  # the totals stop at the violation: they would mislead
        raise typer.Exit(1)
    if report.auctions:  # a control run holds no auctions
        console.print(_audit_table(report))
    console.print(_lifecycle_table(report))
    if vouched_by_none:
        console.print(
            Text.assemble(
                ("UNANCHORED", "bold yellow"),
                ": no head kept elsewhere vouches for this ledger (summary.json is missing or "
                "names none), so a consistent rewrite would pass the rules; give --head HEX",
                " (accepted with --unanchored)" if unanchored else ", or --unanchored",
            ),
            soft_wrap=True,
        )
        if not unanchored:
            raise typer.Exit(1)


def _anchors(
    run: Path, ledger: DiskLedger, head: str | None, since: str | None, verify_key: Path | None
) -> Anchors:
    """What vouches for the run's ledger: the head given (or the one summary.json recorded),
    an earlier head it must extend, the key its heads are signed with."""
    recorded = guarded(lambda: rundir.recorded_head(run))
    if head is not None:
        recorded = guarded(lambda: full_head(ledger, head))
    return Anchors(
        head=recorded,
        since=None if since is None else guarded(lambda: full_head(ledger, since, "--since")),
        verifier=None if verify_key is None else guarded(lambda: Verifier(verify_key)),
    )


@app.command("head", cls=Command)
def head_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for machines.")] = False,
) -> None:
    """Print the ledger's head (the Merkle root to keep), its size and its signature."""
    ledger = guarded(lambda: rundir.open_run_ledger(run))
    head = proofs.head_of(ledger)
    if as_json:
        print(json.dumps(head, indent=2, sort_keys=True))
        return
    console.print(Text.assemble("head ", (head["root"], "bold")), soft_wrap=True)
    batches = "batch" if head["size"] == 1 else "batches"
    console.print(f"tree size {head['size']:,} {batches}, {head['events']:,} events")
    console.print(f"signature {head['signature'] or 'none (unsigned)'}", soft_wrap=True)


@app.command("prove", cls=Command)
def prove_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    seq: Annotated[
        int | None, typer.Option(help="Prove that this event is in the ledger (inclusion).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Prove that the ledger extends this earlier head (consistency)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="With --seq: a directory for proof.json and the event's segment, "
            "checkable offline (docs/ledger.md)."
        ),
    ] = None,
) -> None:
    """Print a proof a third party checks offline against a head they kept."""
    if (seq is None) == (since is None):
        fail("give one of --seq N (inclusion) or --since HEAD (consistency)")
    ledger = guarded(lambda: rundir.open_run_ledger(run))
    if since is not None:
        prior = guarded(lambda: full_head(ledger, since, "--since"))
        print(json.dumps(guarded(lambda: proofs.consistency(ledger, prior)), indent=2))
        return
    assert seq is not None
    proof = guarded(lambda: proofs.inclusion(ledger, seq))
    if out is None:
        print(json.dumps(proof, indent=2))
        return
    written = guarded(lambda: proofs.write_inclusion(ledger, proof, out))
    console.print(Text.assemble("proof written to ", (str(written), "bold")), soft_wrap=True)


@app.command("keygen", cls=Command)
def keygen_cmd(
    key: Annotated[Path, typer.Argument(help="The private key file to write (KEY.pub beside).")],
) -> None:
    """Make an Ed25519 key pair for signing ledger heads (`market simulate --sign-key`)."""
    public = guarded(lambda: generate(key))
    console.print(f"private key {key} (keep it), public key {public} (give it to auditors)")


@app.command("sweep", cls=Command)
def sweep_cmd(
    out: Annotated[Path, typer.Option(help="The sweep directory (resumed if it exists).")],
    preset: Annotated[str | None, typer.Option(help="The base settings' preset.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A TOML config for the base settings.")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one base setting, e.g. --set steps=200000."),
    ] = None,
    mechanisms: Annotated[
        str | None, typer.Option(help="An axis: mechanisms, e.g. ccv,v,bb.")
    ] = None,
    tasks: Annotated[str | None, typer.Option(help="An axis: tasks, e.g. chain,duality.")] = None,
    methods: Annotated[
        str | None, typer.Option(help="An axis: control methods, e.g. independent,full.")
    ] = None,
    agents: Annotated[str | None, typer.Option(help="An axis: control agents, e.g. 2,4.")] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(help="Any axis: KEY=V1,V2 (e.g. ppo.entropy_coef=0.05,0.1); repeatable."),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Seeds: 0-9, or 0,3,7.")] = "0",
    workers: Annotated[int, typer.Option(min=1, help="Runs at once (local backend).")] = 2,
    backend: Annotated[
        str, typer.Option(help="local (a process pool) or ray (Ray tasks).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray: left out (or local): Ray started in this process for the sweep; auto: "
            "join the cluster running on this machine (`ray start --head`); else a cluster's "
            "address (HOST:6379, ray://HOST:10001)."
        ),
    ] = None,
) -> None:
    """Run every combination of the axes times the seeds; skip the runs already finished.

    Every cell's settings are checked before anything runs. Ctrl-C stops the sweep; the same
    command continues it."""
    from simulation.sweep import Sweep, axes_of, compare, parse_axis, parse_seeds, results

    if backend not in ("local", "ray"):
        fail(f"unknown backend {backend!r}; choose one of: local, ray")
    named = [("mechanism", mechanisms), ("task", tasks), ("method", methods), ("agents", agents)]
    texts = [f"{k}={v}" for k, v in named if v is not None] + list(grid or [])
    axes = [guarded(lambda t=t: parse_axis(t)) for t in texts]  # type: ignore[misc]
    if len({k for k, _ in axes}) < len(axes):
        fail("an axis is given twice")
    text = guarded(lambda: config.read_text(encoding="utf-8")) if config is not None else ""
    chosen_seeds = guarded(lambda: parse_seeds(seeds))
    sweep = Sweep(preset, tuple(assignments or ()), tuple(axes), chosen_seeds, text)
    _run_sweep(sweep, out, workers, backend, address)
    console.print(_frame_table("final return per cell", compare(results(out), axes_of(out))))
    console.print(Text.assemble("sweep written to ", (str(out), "bold")))


def _run_sweep(sweep: Sweep, out: Path, workers: int, backend: str, address: str | None) -> None:
    """Run the sweep's unfinished cells under a progress bar; Ctrl-C says how far it got."""
    from analyses.runs import summarise_run
    from simulation.sweep import execute, plan, unfinished

    total = len(list(sweep.cells()))
    try:
        todo = guarded(lambda: plan(sweep, out))
        console.print(f"{total} runs, {total - len(todo)} already finished, {len(todo)} to run")
        with _progress() as progress:
            bar = progress.add_task("runs", total=len(todo))

            def advance(_row: dict[str, Any]) -> None:
                progress.advance(bar)

            guarded(
                lambda: execute(
                    sweep, out, todo, workers, backend, address, advance, summarise=summarise_run
                )
            )
    except KeyboardInterrupt:
        finished = total - len(unfinished(sweep, out))
        err.print(
            Text(f"interrupted: {finished} of {total} runs finished; rerun the same command "
                 "to continue"),
            highlight=False,
            soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(130) from None


def _listing(title: str, *columns: str) -> Table:
    """A table of named things: the name in bold, then `columns`."""
    table = Table(title=title)
    table.add_column("name", style="bold")
    for column in columns:
        table.add_column(column)
    return table


@app.command("presets", cls=Command)
def presets_cmd() -> None:
    """List the named experiments `simulate --preset NAME` starts from."""
    from simulation.config import PRESETS

    table = _listing(
        "presets (market simulate --preset NAME; --set to change a setting)",
        "experiment",
        "settings",
    )
    for name, preset in PRESETS.items():
        settings = ", ".join(f"{k}={v}" for k, v in preset.settings.items())
        table.add_row(name, preset.description, settings)
    console.print(table)


@app.command("tasks", cls=Command)
def tasks_cmd() -> None:
    """List the built-in tasks, how to name any Gymnasium env, and other packages' tasks."""
    from market.control_tasks import CONTROL_TASKS
    from market.tasks import ABOUT, ENTRY_POINTS, offered

    table = _listing("tasks (market simulate --task NAME)", "variant", "what it is")
    for name, about in ABOUT.items():
        table.add_row(name, "auction", about)
    for name, kind in CONTROL_TASKS.items():
        table.add_row(name, "control", (kind.__doc__ or "").strip().splitlines()[0])
    table.add_row(
        "gym:ID",
        "auction",
        "any Gymnasium env with Discrete actions, one primitive per action: gym:CartPole-v1, "
        "gym:Acrobot-v1, gym:FrozenLake-v1, gym:MiniGrid-DoorKey-5x5-v0 (docs/gymnasium.md)",
    )
    table.add_row(
        "gym:ID",
        "control",
        "a Gymnasium env with a Box action space and a settable state as the agents' plant: "
        "gym:Pendulum-v1 (docs/gymnasium.md)",
    )
    for prefix, where in offered().items():
        table.add_row(f"{prefix}:NAME", "auction", f"offered by {where}")
    console.print(table)
    console.print(
        f"A package offers tasks as PREFIX:NAME through the {ENTRY_POINTS!r} entry point group "
        "(docs/gymnasium.md)."
    )


@app.command("report", cls=Command)
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run or sweep directory.")],
    points: Annotated[
        int, typer.Option(min=2, help="Checkpoints of the wealth-over-time series.")
    ] = 200,
) -> None:
    """Tables in the terminal; PNG plots and one self-contained report.html in RUN/report/.

    RUN may be a run directory or a sweep directory (`market sweep --out`)."""
    from analyses.report import REPORT, run_report, sweep_report, write_html
    from simulation.sweep import SWEEP

    if (run / SWEEP).is_file():
        report = guarded(lambda: sweep_report(run))
    else:
        report = guarded(lambda: run_report(run, points))
    console.print(Text(report.title, style="bold"))
    for name, frame in report.tables.items():
        console.print(_frame_table(name, frame))
    page = guarded(lambda: write_html(report, run / REPORT / "report.html"))
    console.print(Text.assemble("plots: ", ", ".join(str(p) for p in report.plots.values())))
    console.print(Text.assemble("report written to ", (str(page), "bold")))


@app.command("watch", cls=Command)
def watch_cmd(
    run: Annotated[Path, typer.Argument(help="A run or sweep directory (running or finished).")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port to serve on.")] = 8765,
    host: Annotated[
        str, typer.Option(help="The address to bind (another than 127.0.0.1 exposes the run).")
    ] = "127.0.0.1",
) -> None:
    """Serve a live page over a run's ledger (docs/watch.md); it never writes into the run.

    The page follows the ledger as it grows, reading only new segments, and redraws itself
    every second. Ctrl-C stops the server."""
    from analyses.watch.server import Watch, bind, page_url, serve

    watch = guarded(lambda: Watch(run))
    try:
        sock = bind(host, port)
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e.strerror or e}; give another --port")
    console.print(Text.assemble("watching ", (str(run), "bold"), " at ", page_url(host, port)),
                  soft_wrap=True)  # fmt: skip
    try:
        serve(watch, sock)
    except KeyboardInterrupt:
        pass
    finally:
        watch.stop()
        sock.close()


def _frame_table(title: str, frame: pl.DataFrame, limit: int = 40) -> Table:
    """A Polars frame as a Rich table (its first `limit` rows)."""
    table = Table(title=title if frame.height <= limit else f"{title} (first {limit} rows)")
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.head(limit).iter_rows():
        table.add_row(
            *("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
        )
    return table


PLAIN_EVERY = 5.0
"""Seconds between plain progress lines when stdout is not a terminal (a log file)."""
SHOW_EVERY = 0.1
"""Seconds between updates of the progress bar's figures (its redraw rate): per episode,
the figures cost 4% of a random-bidder run's loop."""


def _execute_with_progress(prepared: Prepared, audit: bool = True) -> Finished:
    """Execute a prepared run under a progress bar: env steps (or episodes), steps/s, the
    recent mean return and, for a learning society, its mean bids. When stdout is not a
    terminal, a plain line says the same every `PLAIN_EVERY` seconds (the first after one)."""
    by_steps = prepared.steps is not None
    total = prepared.steps if by_steps else prepared.episodes
    done = {"steps": 0, "episodes": 0}
    recent: deque[int] = deque(maxlen=100)
    start = time.perf_counter()
    said = {"at": start + 1.0 - PLAIN_EVERY, "shown": start}
    learner = prepared.learner
    with _progress() as progress:
        bar = progress.add_task("env steps" if by_steps else "episodes", total=total)

        def tick(result: EpisodeResult) -> None:
            done["steps"] += result.steps
            done["episodes"] += 1
            recent.append(result.episode_return)
            now = time.perf_counter()
            if now - said["shown"] < SHOW_EVERY:  # Speed: the bar redraws at 10 Hz anyway
                return
            said["shown"] = now
            rate = done["steps"] / max(now - start, 1e-9)
            text = f"{rate:,.0f} steps/s  return {to_credit(int(np.mean(recent))):.3f}"
            if learner is not None and hasattr(learner, "mean_bids"):
                text += "  bids " + " ".join(f"{b:.2f}" for b in learner.mean_bids())
            progress.update(
                bar, completed=done["steps" if by_steps else "episodes"], description=text
            )
            if not console.is_terminal and now - said["at"] >= PLAIN_EVERY:
                said["at"] = now
                of = f" of {total:,}" if total is not None else ""
                count = f"{done['steps']:,}{of if by_steps else ''} env steps, "
                count += f"{done['episodes']:,}{'' if by_steps else of} episodes"
                console.print(
                    f"progress: {count}, {text}, {prepared.ledger.next_seq:,} events",
                    highlight=False,
                    soft_wrap=True,
                )

        checked = progress.add_task("closing audit (events)", total=None, visible=False)

        def audited(events: int) -> None:
            progress.update(bar, completed=total)  # the run is over
            progress.update(checked, completed=events, total=prepared.ledger.next_seq)
            progress.update(checked, visible=True)

        def execute() -> Finished:
            with storage_failed(prepared):
                return prepared.execute(tick, audit, audited)

        finished = guarded(execute)
        progress.update(bar, completed=total)
    return finished


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


def _verdict(report: AuditReport) -> str:
    if not report.ok:
        return f"[bold red]AUDIT FAILED[/] {report.violation}"
    minted = (
        f", {to_credit(report.minted):.6f} credit minted by the mechanism" if report.minted else ""
    )
    torn = f", torn tail reported ({len(report.torn_tail)})" if report.torn_tail else ""
    torn += _vouched(report)
    if report.not_rederived:
        torn += "; not re-derived: " + "; ".join(
            f"{rule} ({why})" for rule, why in report.not_rederived.items()
        )
    if not report.closed:
        torn += "; the last run was not closed, so its closing balances were not checked"
    return (
        f"[bold green]AUDIT CLEAN[/] {report.events:,} events, {report.auctions:,} auctions, "
        f"{report.episodes:,} episodes; every rule holds{minted}{torn}"
    )


def _vouched(report: AuditReport) -> str:
    """What the heads and signatures vouch for, as the verdict's tail."""
    vouched, said = report.vouched, ""
    if vouched.anchored_to is not None:
        said += (
            f"; the head kept vouches for the first {vouched.anchored_to:,} events, not the "
            f"{report.events - vouched.anchored_to:,} appended after it (a continuation: "
            f"give its own head, or --since to prove it only appended)"
        )
    if vouched.extends is not None:
        said += (
            f"; it extends head {vouched.extends.root[:16]} ({vouched.extends.events:,} events) "
            f"by appending {report.events - vouched.extends.events:,} (consistency proof checked)"
        )
    if vouched.verified:
        said += f"; all {vouched.signed:,} heads signed by the key"
    elif vouched.signed:
        said += f"; {vouched.signed:,} heads signed, not checked (give --verify-key)"
    else:
        said += "; heads unsigned"
    return said


def _audit_table(report: AuditReport) -> Table:
    table = Table(title="credit by mechanism (credit)")
    for col in ("mechanism", "episodes", "auctions", "rewards in", "paid", "minted"):
        table.add_column(col, justify="left" if col == "mechanism" else "right")
    for row in report.per_mechanism:
        table.add_row(
            str(row["mechanism"]),
            f"{row['episodes']:,}",
            f"{row['auctions']:,}",
            *(f"{to_credit(int(str(row[k] or 0))):.6f}" for k in ("rewards_in", "paid", "minted")),
        )
    table.add_row(
        "total",
        f"{report.episodes:,}",
        f"{report.auctions:,}",
        f"{to_credit(report.rewards_in):.6f}",
        "",
        f"{to_credit(report.minted):.6f}",
        style="bold",
    )
    return table


def _lifecycle_table(report: AuditReport) -> Table:
    table = Table(title="accounts' lifecycle (credit)")
    for col in ("event", "count", "credit"):
        table.add_column(col, justify="left" if col == "event" else "right")
    rows = [
        ("opened", report.opens, None),
        ("closed", report.closes, None),
        ("endowed", report.endowments, report.endowed),
        ("  of which by the environment", None, report.endowed_in),
        ("rent paid", None, report.rent),
        ("liquidated", report.liquidations, report.liquidated),
        ("dividends to parents", report.dividends, report.dividends_paid),
    ]
    for event, count, units in rows:
        table.add_row(
            event,
            "" if count is None else f"{count:,}",
            "" if units is None else f"{to_credit(units):.6f}",
        )
    return table


def _wealth_table(frame: pl.DataFrame) -> Table:
    table = Table(title="final wealth (from the ledger)")
    table.add_column("account")
    table.add_column("credit", justify="right")
    for account, credit in frame.select("account", "credit").iter_rows():
        table.add_row(account, f"{credit:.6f}")
    return table


def main() -> None:
    """The `market` console script: usage errors are one line too, not a panel."""
    keep_freed_memory()
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.TyperException as e:  # a usage error: bad flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        err.print(Text.assemble(("error: ", "bold red"), e.format_message(), where), soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
