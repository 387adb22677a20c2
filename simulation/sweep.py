"""Sweeps: one Simulation per cell of a grid of settings times seeds, locally or on Ray.

A sweep directory holds:
  sweep.toml                   the base settings, the axes and the seeds asked for
  runs/K=V/.../seed=S/         one run directory per cell (ledger, configs, summary)
  results/K=V/.../seed=S/part-0.parquet
                               one summary row per finished run: a Hive-partitioned
                               dataset (`pl.scan_parquet(..., hive_partitioning=True)`)

Every cell's settings are checked (`check`) before anything runs or any folder is made. A
cell is finished when its result part exists (written, atomically, after its run audited clean
or not, which the row records). Running the same sweep again skips finished cells and reruns the
others from scratch (an unfinished cell's run directory is removed first: a run that did not
finish is not a result). More seeds or axis values may be added to a sweep; its base
settings may not change.

Every cell's ledger depends on its settings and seed alone, so the local process pool and
Ray write the same bytes for the same cells (`tests/test_sweep.py`). A Ctrl-C reaches only the
sweep's own process (the pool's workers ignore SIGINT), which stops the workers and raises
KeyboardInterrupt; the cells cut off are rerun next time.
"""

from __future__ import annotations

import itertools
import multiprocessing
import shutil
import signal
import threading
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import tomli_w

from simulation.config import Simulation, parse_assignment, resolve
from simulation.runner import check

SWEEP = "sweep.toml"
RUNS = "runs"
RESULTS = "results"
"""The share of a run's last episodes its final return is averaged over."""
LOCAL = ("local", "none")
"""The --address values that, like no --address, start Ray in this process for the sweep."""
NO_CLUSTER = (
    "no Ray cluster is running: start one with `ray start --head`, or leave out --address "
    "to run Ray in this process"
)


class NoRayCluster(ConnectionError):
    """`--address auto` found no running Ray cluster to join."""


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: its axis values (in axis order) and its seed."""

    values: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def parts(self) -> list[str]:
        """Its Hive path segments, K=V per axis then seed=S."""
        return [f"{k}={_text(v)}" for k, v in self.values] + [f"seed={self.seed}"]

    def path(self, root: Path) -> Path:
        """Its directory under `root`."""
        return root.joinpath(*self.parts)


@dataclass(frozen=True)
class Sweep:
    """The base settings (layers as for simulate), the axes and the seeds."""

    preset: str | None
    assignments: tuple[str, ...]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...]
    config_text: str = ""
    """The --config file's contents (kept, so the sweep does not depend on the file)."""

    def cells(self) -> Iterator[Cell]:
        """Every cell, axis values varying slowest first, then seeds."""
        names = [k for k, _ in self.axes]
        for combo in itertools.product(*(values for _, values in self.axes)):
            for seed in self.seeds:
                yield Cell(tuple(zip(names, combo, strict=True)), seed)

    def simulation(self, cell: Cell) -> Simulation:
        """The cell's settings: the base layers, then its axis values and seed."""
        config = tomllib.loads(self.config_text) if self.config_text else None
        sets = [*self.assignments, *(f"{k}={_toml(v)}" for k, v in cell.values)]
        sets.append(f"seed={cell.seed}")
        return resolve(self.preset, config, None, sets)

    def base(self) -> dict[str, Any]:
        """What may not change between runs of one sweep directory."""
        return {"preset": self.preset or "", "set": list(self.assignments),
                "config": self.config_text}  # fmt: skip


Job = tuple[str, str, dict[str, Any], Cell]
"""A cell to run: its settings as TOML, its run directory, its labels, the cell."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "0-9" or "0,3,7" (or a mix: "0-2,5") as seeds, each non-negative, in order, once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        first, dash, last = part.partition("-")
        try:
            span = range(int(first), int(last) + 1) if dash else range(int(first), int(first) + 1)
        except ValueError:
            raise ValueError(f"--seeds {text!r}: expected e.g. 0-9 or 0,3,7") from None
        if not span or span.start < 0:
            raise ValueError(f"--seeds {text!r}: seeds are non-negative, ranges low-high")
        seeds += [s for s in span if s not in seeds]
    if not seeds:
        raise ValueError(f"--seeds {text!r}: no seeds")
    return tuple(seeds)


def parse_axis(text: str) -> tuple[str, tuple[Any, ...]]:
    """ "key=v1,v2" as (key, (v1, v2)), each value read as by --set."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--grid {text!r}: expected KEY=V1,V2, e.g. mechanism=ccv,v,bb")
    return key.strip(), tuple(parse_assignment(f"{key}={v}")[1] for v in values.split(","))


def unfinished(sweep: Sweep, out: Path) -> list[Cell]:
    """The sweep's cells without a result in `out` yet."""
    return [c for c in sweep.cells() if not _result_path(out, c).is_file()]


def plan(sweep: Sweep, out: Path) -> list[Cell]:
    """Check every cell's settings, then record the sweep in `out` and list the cells to run
    (those without a result yet)."""
    for cell in sweep.cells():
        check(sweep.simulation(cell))  # a bad key or value fails here, before anything runs
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / SWEEP
    if recorded.is_file():
        before = tomllib.loads(recorded.read_text(encoding="utf-8"))
        if before.get("base") != sweep.base():
            raise ValueError(f"{out} holds a sweep with other base settings; choose another --out")
    record = {
        "base": sweep.base(),
        "axes": {k: list(v) for k, v in sweep.axes},
        "seeds": list(sweep.seeds),
    }
    recorded.write_text(tomli_w.dumps(record), encoding="utf-8")
    return unfinished(sweep, out)


Summarise = Callable[[Path], dict[str, Any]]
"""A finished run's result row, from its directory (`analyses.runs.summarise_run`, passed
in by who runs the sweep: the analyses sit above this package). A module-level function,
so a process pool or Ray ships it by name."""


def run_cell(
    sim_toml: str, run_dir: str, labels: dict[str, Any], summarise: Summarise
) -> dict[str, Any]:
    """Run one cell (settings as TOML) into `run_dir` and return its result row.

    A module-level function of plain arguments, so a process pool or Ray can ship it.
    """
    from simulation.runner import prepare

    sim = Simulation.model_validate(tomllib.loads(sim_toml))
    path = Path(run_dir)
    if path.exists():  # an unfinished earlier attempt
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = prepare(sim, path).execute()
    return labels | summarise(finished.run)


def execute(
    sweep: Sweep,
    out: Path,
    cells: list[Cell],
    workers: int,
    backend: str = "local",
    address: str | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    *,
    summarise: Summarise,
) -> list[dict[str, Any]]:
    """Run `cells` (local process pool, or Ray tasks) and write each result part, the row
    `summarise` makes of its run, as it arrives; `on_done` sees every row. On a Ctrl-C the
    cells still running are stopped and KeyboardInterrupt is raised."""
    jobs = [(sweep.simulation(c).to_toml(), str(c.path(out / RUNS)), _labels(c), c) for c in cells]
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any], cell: Cell) -> None:
        path = _result_path(out, cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")  # a part cut off is no result
        pl.DataFrame([{k: v for k, v in row.items() if k not in _labels(cell)}]).write_parquet(
            partial
        )
        partial.replace(path)
        rows.append(row)
        if on_done is not None:
            on_done(row)

    if backend == "ray":
        _execute_ray(jobs, address, done, summarise)
    elif backend == "local":
        _execute_local(jobs, workers, done, summarise)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of: local, ray")
    return rows


def results(out: Path) -> pl.DataFrame:
    """Every finished cell's row, with its axis values and seed from the Hive paths."""
    parts = sorted((out / RESULTS).glob("**/part-0.parquet"))
    if not parts:
        raise ValueError(f"{out}: no finished runs (no {RESULTS}/.../part-0.parquet)")
    return pl.scan_parquet(out / RESULTS / "**" / "*.parquet", hive_partitioning=True).collect()


def axes_of(out: Path) -> list[str]:
    """The sweep's axis names, from its sweep.toml."""
    recorded = tomllib.loads((out / SWEEP).read_text(encoding="utf-8"))
    return list(recorded.get("axes", {}))


def compare(table: pl.DataFrame, axes: list[str]) -> pl.DataFrame:
    """Per cell of the axes: seeds, final return median [min, max], and all audits clean."""
    value = pl.col("final_return")
    return (
        table.group_by(axes or pl.lit(0).alias("all"), maintain_order=True)
        .agg(
            pl.len().alias("seeds"),
            value.median().alias("median_return"),
            value.min().alias("min_return"),
            value.max().alias("max_return"),
            pl.col("audit_clean").all(),
        )
        .sort(axes or "all")
    )


def _execute_local(
    jobs: list[Job],
    workers: int,
    done: Callable[[dict[str, Any], Cell], None],
    summarise: Summarise,
) -> None:
    """The jobs on a pool of `workers` processes; on any exception (a Ctrl-C, say) the cells
    not started are cancelled and the running ones stopped at once.

    Spawned, not forked: a fork of a process whose Polars or torch thread pools are running
    can deadlock in the child. The workers start with SIGINT ignored (inherited from here), so
    a Ctrl-C in the terminal interrupts this process only, not every worker with a traceback.
    """
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max(workers, 1), mp_context=spawn)
    try:
        with _sigint_ignored():  # the submissions start the workers
            futures = {pool.submit(run_cell, *job[:3], summarise): job[3] for job in jobs}
        for future in as_completed(futures):
            done(future.result(), futures[future])
    except BaseException:
        with _sigint_ignored():  # a second Ctrl-C does not cut the stopping short
            _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the pool's queued cells and end its workers now (a cell cut off is rerun from
    scratch next time)."""
    processes = list(pool._processes.values())  # Python < 3.14 has no terminate_workers()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile (only the main thread may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.SIG_DFL)


def _execute_ray(
    jobs: list[Job],
    address: str | None,
    done: Callable[[dict[str, Any], Cell], None],
    summarise: Summarise,
) -> None:
    """The jobs as Ray tasks: on a Ray started in this process for the sweep (no address, or
    one of `LOCAL`), the running cluster (auto) or the cluster at `address`."""
    import ray

    started = not ray.is_initialized()
    if started:
        _ray_init(address)
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        pending = {remote.remote(*job[:3], summarise): job[3] for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(ray.get(ref), pending.pop(ref))
    finally:
        if started:
            ray.shutdown()


def _ray_init(address: str | None) -> None:
    """Start or join Ray for `address`; a one-line error when there is nothing to join."""
    import ray

    local = address is None or address.strip().lower() in LOCAL
    try:
        ray.init(
            address="local" if local else address, include_dashboard=False, log_to_driver=False
        )
    except ConnectionError:
        if address != "auto":
            raise
        raise NoRayCluster(NO_CLUSTER) from None
    except ValueError as e:  # an address Ray cannot read
        raise ValueError(f"--address {address}: {e}") from None


def _result_path(out: Path, cell: Cell) -> Path:
    return cell.path(out / RESULTS) / "part-0.parquet"


def _labels(cell: Cell) -> dict[str, Any]:
    return {**{k: _text(v) for k, v in cell.values}, "seed": cell.seed}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _toml(value: Any) -> str:
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()
