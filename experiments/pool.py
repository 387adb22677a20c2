"""The experiments' shared runner: every job on a process pool, under one progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from rich.progress import Progress

Row = dict[str, object]
R = TypeVar("R")


def run_each(run_one: Callable[..., R], jobs: Sequence[tuple[Any, ...]], workers: int) -> list[R]:
    """`run_one(*job)` for every job on `workers` processes: the results, in the order the
    runs finish."""
    results: list[R] = []
    with ProcessPoolExecutor(workers) as pool, Progress() as progress:
        bar = progress.add_task("runs", total=len(jobs))
        futures = [pool.submit(run_one, *job) for job in jobs]
        for future in as_completed(futures):
            results.append(future.result())
            progress.advance(bar)
    return results


def run_all(
    run_one: Callable[..., tuple[Row, list[Row]]], jobs: Sequence[tuple[Any, ...]], workers: int
) -> tuple[list[Row], list[Row]]:
    """`run_one(*job)` for every job on `workers` processes: all summary rows and all curve
    points, in the order the runs finish."""
    results = run_each(run_one, jobs, workers)
    return [row for row, _ in results], [point for _, curve in results for point in curve]
