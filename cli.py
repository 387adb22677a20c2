"""The `market` command line: simulate a society into an audited ledger, and audit it."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from agents.fixed import BIDDERS
from agents.runner import OPTION_TASKS, Finished, Prepared, prepare
from agents.simulation import resolve
from analyses.wealth import wealth
from ledger.errors import LedgerError
from ledger.units import to_credit
from market import rundir
from market.audit import AuditReport, audit
from market.kernel import EpisodeResult
from market.tasks import TASKS

app = typer.Typer(
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


@app.command("simulate")
def simulate_cmd(
    task: Annotated[
        str | None, typer.Option(help=f"One of: {', '.join(TASKS)} [default: chain].")
    ] = None,
    mechanism: Annotated[
        str | None, typer.Option(help="ccv, v, bb, fp or env [default: ccv].")
    ] = None,
    bidder: Annotated[
        str | None,
        typer.Option(
            help=f"One of: {', '.join(BIDDERS)} [default: truthful; random on the tasks over "
            "images, which have no Q* table]; with --variant control: zero or random (fixed "
            "controls instead of learners)."
        ),
    ] = None,
    learn: Annotated[
        bool | None, typer.Option("--learn", help="PPO primitives learn from their payoffs.")
    ] = None,
    monolithic: Annotated[
        bool | None,
        typer.Option(
            "--monolithic", help="Learn with the categorical PPO baseline (env, solitary)."
        ),
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to run [default: 1000].")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps (auctions) to run.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="The one seed every random number derives from [default: 0].")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="A new run directory (default: runs/...).")
    ] = None,
    solitary: Annotated[
        bool | None, typer.Option("--solitary", help="No clones: one bidder per primitive.")
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="Discount of utilities and truthful bids [default: 0.99].")
    ] = None,
    constant: Annotated[
        float | None, typer.Option(help="The bid of the constant bidder [default: 0.5].")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Episodes running at once [default: 1; 128 with --learn; 32 learning control]."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a run (--steps or --episodes more; a learning run from its last "
            "snapshot), reading only the ledger's tail."
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start the learners from a learning run's latest snapshot (a transfer, e.g. "
            "a society pretrained on tworooms, now on tworooms-blue).",
        ),
    ] = None,
    primitives: Annotated[
        int | None,
        typer.Option(help="Chain only: the society's primitives, L and R then useless ones."),
    ] = None,
    economy: Annotated[
        str | None,
        typer.Option(
            help="hayek: members are endowed, bid at most their wealth, pay rent, and close "
            "when bankrupt (docs/economy.md) [default: none]."
        ),
    ] = None,
    endowment: Annotated[
        float | None, typer.Option(help="With --economy: each founder's credit [default: 1.0].")
    ] = None,
    rent: Annotated[
        float | None,
        typer.Option(help="With --economy: credit per auction a member is alive [default: 0.001]."),
    ] = None,
    births: Annotated[
        bool | None,
        typer.Option(
            "--births/--no-births",
            help="With --economy: members richer than --birth-above found children "
            "[default: births].",
        ),
    ] = None,
    birth_above: Annotated[
        float | None,
        typer.Option(
            help="With --economy: the wealth that founds a child [default: 4 x endowment]."
        ),
    ] = None,
    child: Annotated[
        str | None,
        typer.Option(
            help="With --economy: a child's policy, copy (its parent's, perturbed by "
            "--mutation) or fresh [default: copy]."
        ),
    ] = None,
    mutation: Annotated[
        float | None,
        typer.Option(help="With --economy: the perturbation of a child's policy [default: 0.01]."),
    ] = None,
    dividend: Annotated[
        float | None,
        typer.Option(
            help="With --economy: a child's profit share paid to its parent [default: 0]."
        ),
    ] = None,
    max_population: Annotated[
        int | None,
        typer.Option(
            help="With --economy: the most members alive at once [default: 2 x founders]."
        ),
    ] = None,
    frozen: Annotated[
        bool | None,
        typer.Option(
            "--frozen",
            help="With --init: the learners bid from the snapshot and never update (evaluate "
            "it, e.g. on mental-rotation-test).",
        ),
    ] = None,
    kernel: Annotated[
        str | None,
        typer.Option(
            help="episodes (a SimPy process each), rounds (all at once, as arrays) or auto "
            "(rounds when several run at once) [default: auto]. Both write the same ledger."
        ),
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(
            help="auction (a society of bidders) or control (agents jointly driving one system) "
            "[default: auction]."
        ),
    ] = None,
    agents: Annotated[
        int | None, typer.Option(help="Control variant: how many agents [default: 2].")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Control variant: independent, ter, ier, iql or full [default: full]."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Start from a named experiment (`market presets`).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML config (a run's simulation.toml, say)."),
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one setting, e.g. --set ppo.entropy_coef=0.05."),
    ] = None,
    audit: Annotated[
        bool,
        typer.Option(
            "--audit/--no-audit",
            help="Audit the ledger when the run ends (streaming, in bounded memory); "
            "--no-audit skips it, for a run audited later with `market audit RUN`.",
        ),
    ] = True,
) -> None:
    """Run a society into a new run directory (or continue one with --resume), then audit it.

    Settings come in layers: a --preset, then a --config file, then the flags given, then
    every --set; the resolved config is written to the run as simulation.toml.
    """

    flags = {
        "task": task, "mechanism": mechanism, "bidder": bidder, "learn": learn,
        "monolithic": monolithic, "episodes": episodes, "steps": steps, "seed": seed,
        "solitary": solitary, "gamma": gamma, "constant": constant,
        "concurrency": concurrency, "kernel": kernel, "variant": variant, "agents": agents,
        "method": method, "init": str(init) if init is not None else None, "frozen": frozen,
        "primitives": primitives, "economy": economy,
        "hayek": {k: v for k, v in (
            ("endowment", endowment), ("rent", rent), ("births", births),
            ("birth_above", birth_above), ("child", child), ("mutation", mutation),
            ("dividend", dividend), ("max_population", max_population)) if v is not None},
    }  # fmt: skip
    sim = guarded(lambda: resolve(preset, config, flags, assignments))
    if sim.task in OPTION_TASKS:
        from agents.option_ppo import ensure_options, rich_progress
        from market.two_rooms import options_path

        if not options_path().exists():
            with rich_progress() as progress:  # the first Two Rooms run trains its options
                guarded(lambda: ensure_options(progress=progress))
    prepared = guarded(lambda: prepare(sim, out, resume))
    finished = _execute_with_progress(prepared, audit)
    _print_finished(finished)


def _print_finished(finished: Finished) -> None:
    """Print a finished run's summary, wealth and audit verdict; exit 1 if it is not clean."""
    run, ledger, summary, report = finished.run, finished.ledger, finished.summary, finished.report
    console.print(Text.assemble("run written to ", (str(run), "bold")))
    table = Table(title="summary", show_header=False)
    table.add_row("events written", f"{summary.events:,}")
    table.add_row("events/s", f"{summary.events / max(summary.seconds, 1e-9):,.0f}")
    table.add_row("episodes", f"{summary.episodes:,}")
    table.add_row("mean return", f"{to_credit(summary.mean_return):.4f} credit")
    table.add_row("ledger head", ledger.head[:16])
    verdict = "skipped (--no-audit)" if report is None else "clean" if report.ok else "failed"
    table.add_row("closing audit", verdict)
    console.print(table)
    console.print(_wealth_table(wealth(ledger.scan())))
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


@app.command("audit")
def audit_cmd(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Check a run's ledger from its stored events alone; exit 0 only when it is clean."""
    ledger = guarded(lambda: rundir.open_run_ledger(run))
    recorded = guarded(lambda: rundir.recorded_head(run))
    with _progress() as progress:
        bar = progress.add_task("auditing (events)", total=ledger.next_seq)

        def done(events: int) -> None:
            progress.update(bar, completed=events)

        report = guarded(lambda: audit(ledger, recorded, progress=done))
    console.print(_verdict(report), soft_wrap=True)
    for note in report.torn_tail:
        console.print(f"[yellow]torn tail:[/] {note}", soft_wrap=True)
    console.print(_audit_table(report))
    console.print(_lifecycle_table(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("sweep")
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
        typer.Option(help="Ray: the cluster to join (auto: the running one; none: start one)."),
    ] = None,
) -> None:
    """Run every combination of the axes times the seeds; skip the runs already finished."""
    from analyses.sweep import Sweep, compare, execute, parse_axis, parse_seeds, plan

    if backend not in ("local", "ray"):
        fail(f"unknown backend {backend!r}; choose one of: local, ray")
    named = [("mechanism", mechanisms), ("task", tasks), ("method", methods), ("agents", agents)]
    axes = [parse_axis(f"{k}={v}") for k, v in named if v is not None]
    axes += [guarded(lambda g=g: parse_axis(g)) for g in grid or []]  # type: ignore[misc]
    if len({k for k, _ in axes}) < len(axes):
        fail("an axis is given twice")
    text = guarded(lambda: config.read_text(encoding="utf-8")) if config is not None else ""
    chosen_seeds = guarded(lambda: parse_seeds(seeds))
    sweep = Sweep(preset, tuple(assignments or ()), tuple(axes), chosen_seeds, text)
    todo = guarded(lambda: plan(sweep, out))
    total = len(list(sweep.cells()))
    console.print(f"{total} runs, {total - len(todo)} already finished, {len(todo)} to run")
    with _progress() as progress:
        bar = progress.add_task("runs", total=len(todo))

        def advance(_row: dict[str, Any]) -> None:
            progress.advance(bar)

        guarded(lambda: execute(sweep, out, todo, workers, backend, address, advance))
    from analyses.sweep import axes_of, results

    console.print(_frame_table("final return per cell", compare(results(out), axes_of(out))))
    console.print(Text.assemble("sweep written to ", (str(out), "bold")))


@app.command("presets")
def presets_cmd() -> None:
    """List the named experiments `simulate --preset NAME` starts from."""
    from agents.simulation import PRESETS

    table = Table(title="presets (market simulate --preset NAME; --set to change a setting)")
    table.add_column("name", style="bold")
    table.add_column("experiment")
    table.add_column("settings")
    for name, preset in PRESETS.items():
        settings = ", ".join(f"{k}={v}" for k, v in preset.settings.items())
        table.add_row(name, preset.description, settings)
    console.print(table)


@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run or sweep directory.")],
    points: Annotated[
        int, typer.Option(min=2, help="Checkpoints of the wealth-over-time series.")
    ] = 200,
) -> None:
    """Tables in the terminal; PNG plots and one self-contained report.html in RUN/report/.

    RUN may be a run directory or a sweep directory (`market sweep --out`)."""
    from analyses.report import REPORT, run_report, sweep_report, write_html
    from analyses.sweep import SWEEP

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


def _frame_table(title: str, frame: pl.DataFrame, limit: int = 40) -> Table:
    """A Polars frame as a Rich table (its first `limit` rows)."""
    table = Table(title=title if frame.height <= limit else f"{title} (first {limit} rows)")
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.head(limit).iter_rows():
        table.add_row(*(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
    return table


def _execute_with_progress(prepared: Prepared, audit: bool = True) -> Finished:
    """Execute a prepared run under a progress bar: env steps (or episodes), steps/s, the
    recent mean return and, for a learning society, its mean bids."""
    by_steps = prepared.steps is not None
    total = prepared.steps if by_steps else prepared.episodes
    done = {"steps": 0, "episodes": 0}
    recent: deque[int] = deque(maxlen=100)
    start = time.perf_counter()
    learner = prepared.learner
    with _progress() as progress:
        bar = progress.add_task("env steps" if by_steps else "episodes", total=total)

        def tick(result: EpisodeResult) -> None:
            done["steps"] += result.steps
            done["episodes"] += 1
            recent.append(result.episode_return)
            if done["episodes"] % 20:
                return
            rate = done["steps"] / max(time.perf_counter() - start, 1e-9)
            text = f"{rate:,.0f} steps/s  return {to_credit(int(np.mean(recent))):.3f}"
            if learner is not None and hasattr(learner, "mean_bids"):
                text += "  bids " + " ".join(f"{b:.2f}" for b in learner.mean_bids())
            progress.update(
                bar, completed=done["steps" if by_steps else "episodes"], description=text
            )

        checked = progress.add_task("closing audit (events)", total=None, visible=False)

        def audited(events: int) -> None:
            progress.update(bar, completed=total)  # the run is over
            progress.update(checked, completed=events, total=prepared.ledger.next_seq)
            progress.update(checked, visible=True)

        finished = guarded(lambda: prepared.execute(tick, audit, audited))
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
    if not report.closed:
        torn += "; the run was not closed, so closing balances were not checked"
    return (
        f"[bold green]AUDIT CLEAN[/] {report.events:,} events, {report.auctions:,} auctions, "
        f"{report.episodes:,} episodes; every rule holds{minted}{torn}"
    )


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
