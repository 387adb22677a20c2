"""The experiments' shared runner: every job on a process pool, under one progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from rich.progress import Progress

Row = dict[str, object]


def run_all(
    run_one: Callable[..., tuple[Row, list[Row]]], jobs: Sequence[tuple[Any, ...]], workers: int
) -> tuple[list[Row], list[Row]]:
    """`run_one(*job)` for every job on `workers` processes: all summary rows and all curve
    points, in the order the runs finish."""
    rows: list[Row] = []
    curves: list[Row] = []
    with ProcessPoolExecutor(workers) as pool, Progress() as progress:
        bar = progress.add_task("runs", total=len(jobs))
        futures = [pool.submit(run_one, *job) for job in jobs]
        for future in as_completed(futures):
            row, curve = future.result()
            rows.append(row)
            curves.extend(curve)
            progress.advance(bar)
    return rows, curves
