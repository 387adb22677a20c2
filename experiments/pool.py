"""The experiments' shared runner: every job on a process pool, under one progress bar.

A long study can keep each finished run (`keep`): run again with the same directory, it
runs only the jobs not yet kept, so a study of many hours can be stopped and taken up again.
A kept run is known by its function and arguments alone: after a change to the code a run
depends on, start from an empty directory.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import Progress

Row = dict[str, object]
R = TypeVar("R")


def kept_at(keep: Path, run_one: Callable[..., Any], job: tuple[Any, ...]) -> Path:
    """Where the result of `run_one(*job)` is kept under `keep`."""
    key = repr((run_one.__module__, run_one.__qualname__, job)).encode()
    return keep / f"{hashlib.sha256(key).hexdigest()[:20]}.pickle"


def run_each(
    run_one: Callable[..., R],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    keep: Path | None = None,
) -> list[R]:
    """`run_one(*job)` for every job on `workers` processes: the results, in the order the
    runs finish (those kept under `keep` first, read, not run)."""
    results: list[R] = []
    todo = list(jobs)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        paths = [kept_at(keep, run_one, job) for job in jobs]
        results = [pickle.loads(path.read_bytes()) for path in paths if path.exists()]
        todo = [job for job, path in zip(jobs, paths, strict=True) if not path.exists()]
    with ProcessPoolExecutor(workers) as pool, Progress() as progress:
        bar = progress.add_task("runs", total=len(jobs), completed=len(jobs) - len(todo))
        futures = {pool.submit(run_one, *job): job for job in todo}
        for future in as_completed(futures):
            result = future.result()
            if keep is not None:
                path = kept_at(keep, run_one, futures[future])
                partial = path.with_suffix(".partial")
                partial.write_bytes(pickle.dumps(result))
                partial.replace(path)  # whole or absent, even if the study is killed here
            results.append(result)
            progress.advance(bar)
            # a line a run, which a log file keeps too (the bar draws only on a terminal)
            done = int(progress.tasks[bar].completed)
            what = ", ".join(str(a) for a in futures[future])
            line = f"{done}/{len(jobs)} {run_one.__name__}: {what}"
            progress.console.print(line, soft_wrap=True, markup=False, highlight=False)
    return results


def run_all(
    run_one: Callable[..., tuple[Row, list[Row]]],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    keep: Path | None = None,
) -> tuple[list[Row], list[Row]]:
    """`run_one(*job)` for every job on `workers` processes (`run_each`): all summary rows
    and all curve points, in the order the runs finish."""
    results = run_each(run_one, jobs, workers, keep)
    return [row for row, _ in results], [point for _, curve in results for point in curve]
