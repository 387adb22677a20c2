"""Saved run outputs and the tables generated from them (docs/results.md, its opening).

An experiment script saves its small run tables (Parquet) and a `source.json` under
`<results>/data/<name>/`. The experiment's `tables(data)` turns them into `Table`s, written
as `<results>/<table>.md` and `.csv` and spliced into the page `<results>.md` between
`<!-- results:<table> -->` and `<!-- /results:<table> -->`. `experiments/regenerate.py` and
the scripts share this module, so a table is made by one function, whichever runs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table as RichTable

RESULTS = Path("docs/results")
"""The committed results directory; its page is docs/results.md."""
SOURCE = "source.json"
"""Each saved data directory's record of the experiment and the command that made it."""
ROOT = Path(__file__).resolve().parents[1]
"""The repository."""
EXPERIMENTS = {
    "tabular": "experiments/tabular",
    "control": "experiments/control",
    "mental-rotation": "experiments/mental_rotation",
    "two-rooms": "experiments/two_rooms",
    "economy": "experiments/economy",
    "gymnasium": "experiments/gym_envs",
    "engine": "benchmarks/engine",
    "learning-throughput": "benchmarks/learning",
    "control-throughput": "benchmarks/control_throughput",
    "analyses-speed": "benchmarks/analyses_speed",
    "scale": "benchmarks/scale",
    "gymnasium-throughput": "benchmarks/gymnasium",
    "twins": "benchmarks/twins",
}
"""Experiment or benchmark name (in source.json) -> its script's module, as folder/module
under the repository."""


class ResultsError(Exception):
    """Saved data or a results directory that cannot be read: a one-line message."""


@dataclass(frozen=True)
class Table:
    """One generated table: its file stem and its cells, already formatted as text."""

    name: str
    frame: pl.DataFrame

    def markdown(self) -> str:
        """A GitHub markdown table of the cells."""
        head = "| " + " | ".join(self.frame.columns) + " |"
        rule = "|" + "---|" * self.frame.width
        body = ["| " + " | ".join(_text(v) for v in row) + " |" for row in self.frame.iter_rows()]
        return "\n".join([head, rule, *body]) + "\n"

    def csv(self) -> str:
        """The same cells as CSV."""
        return self.frame.select(pl.all().cast(pl.String)).write_csv()


class Experiment(Protocol):
    """What regenerate.py needs of an experiment script's module."""

    def tables(self, data: Path) -> list[Table]: ...


PLOTS = "plots"
"""The optional function of a script's module that draws its figures, `plots(data, img)`
(a benchmark whose table says it all has none)."""


def show(made: list[Table]) -> None:
    """Print the tables on the terminal (Rich), as they are written."""
    console = Console()
    for table in made:
        out = RichTable(title=table.name)
        for i, column in enumerate(table.frame.columns):
            out.add_column(column, justify="left" if i == 0 else "right")
        for row in table.frame.iter_rows():
            out.add_row(*(_text(v) for v in row))
        console.print(out)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def save_data(
    results: Path, name: str, experiment: str, frames: Mapping[str, pl.DataFrame]
) -> Path:
    """Write `frames` as `<results>/data/<name>/<key>.parquet` with a source.json naming the
    experiment and this process's command line; the directory."""
    data = results / "data" / name
    data.mkdir(parents=True, exist_ok=True)
    for key, frame in frames.items():
        frame.write_parquet(data / f"{key}.parquet", compression="zstd", compression_level=19)
    script = Path(sys.argv[0]).resolve()
    command = shlex.join(["python", f"{script.parent.name}/{script.name}", *sys.argv[1:]])
    source = {"experiment": experiment, "command": command}
    (data / SOURCE).write_text(json.dumps(source, indent=1) + "\n", encoding="utf-8")
    return data


def read(data: Path, key: str) -> pl.DataFrame:
    """The saved table `<data>/<key>.parquet`."""
    path = data / f"{key}.parquet"
    if not path.is_file():
        raise ResultsError(f"{path}: no such saved table")
    return pl.read_parquet(path)


def spread(values: pl.Series, fmt: str = "{:,.0f}") -> str:
    """`median [min, max]` of the non-null values, one value if they are all equal, `-` if
    there are none."""
    v = values.drop_nulls().cast(pl.Float64).to_numpy()
    if v.size == 0:
        return "-"
    if v.min() == v.max():
        return fmt.format(v[0])
    median = float(np.median(v))
    return f"{fmt.format(median)} [{fmt.format(v.min())}, {fmt.format(v.max())}]"


BOOTSTRAP_SEED = 0
"""The resampling seed of `interval`, fixed so that a table regenerates exactly."""


def interval(values: pl.Series, fmt: str = "{:,.0f}") -> str:
    """`mean [low, high]`: the mean of the non-null values and its 95% confidence interval,
    bootstrapped over them (SciPy's percentile bootstrap, 9,999 resamples, `BOOTSTRAP_SEED`);
    one value if they are all equal, `-` if there are none."""
    from scipy.stats import bootstrap

    v = values.drop_nulls().cast(pl.Float64).to_numpy()
    if v.size == 0:
        return "-"
    if v.min() == v.max():
        return fmt.format(v[0])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ci = bootstrap((v,), np.mean, method="percentile", rng=rng).confidence_interval
    return f"{fmt.format(v.mean())} [{fmt.format(ci.low)}, {fmt.format(ci.high)}]"


def frame(rows: list[dict[str, str]]) -> pl.DataFrame:
    """Formatted rows as a frame of strings (no rows: no columns)."""
    return pl.DataFrame(rows, schema=dict.fromkeys(rows[0], pl.String) if rows else None)


def median(values: pl.Series, fmt: str = "{:,.0f}") -> str:
    """The median of the non-null values, formatted; `-` if there are none."""
    v = values.drop_nulls().cast(pl.Float64).to_numpy()
    return fmt.format(float(np.median(v))) if v.size else "-"


def first_reached(table: pl.DataFrame, column: str, level: float) -> int | None:
    """The env steps of `table`'s first row whose `column` is at or above `level` (a run's
    episodes in the order they end: when it met a criterion); None if none is."""
    hit = table.filter(pl.col(column) >= level)
    return int(hit["env_steps"][0]) if hit.height else None


MARKER = re.compile(r"<!-- results:([\w.-]+) -->\n(.*?)<!-- /results:\1 -->", re.S)
"""A spliced table in the results page: its name, then its text between the markers."""


def sources(results: Path, names: list[str]) -> list[Path]:
    """The saved data directories under `results`: all of them, or those named."""
    root = results / "data"
    if not root.is_dir():
        raise ResultsError(f"{root}: no saved data directory")
    found = sorted(p.parent for p in root.glob(f"*/{SOURCE}"))
    if unknown := sorted(set(names) - {p.name for p in found}):
        known = ", ".join(p.name for p in found) or "none"
        raise ResultsError(f"no saved data for {', '.join(unknown)} in {root} (saved: {known})")
    return [p for p in found if not names or p.name in names]


def experiment(data: Path) -> Experiment:
    """The module of the experiment that saved `data` (its source.json names it)."""
    try:
        name = json.loads((data / SOURCE).read_text(encoding="utf-8"))["experiment"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResultsError(f"{data / SOURCE}: unreadable ({error})") from None
    if name not in EXPERIMENTS:
        raise ResultsError(f"{data / SOURCE}: unknown experiment {name!r}")
    return cast(Experiment, _script(EXPERIMENTS[name]))


def _script(script: str) -> ModuleType:
    """The module of `folder/module`, loaded from its file under a name of its own
    (`benchmarks/gymnasium.py` is not Gymnasium); its folder is importable after the packages,
    for the modules it imports beside it."""
    folder, module = script.split("/")
    if str(ROOT / folder) not in sys.path:
        sys.path.append(str(ROOT / folder))
    key = f"results_{folder}_{module}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / folder / f"{module}.py")
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[key] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[key]


def derive(results: Path, names: list[str]) -> list[Table]:
    """Every table the saved data of `names` (all if empty) derive, in directory order."""
    made: list[Table] = []
    for data in sources(results, names):
        try:
            made += experiment(data).tables(data)
        except (pl.exceptions.PolarsError, OSError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ResultsError(f"{data}: cannot derive its tables ({first})") from None
    return made


def expected(results: Path, made: list[Table], complete: bool) -> dict[Path, str]:
    """Each file's text as the tables make it: `<table>.md`, `<table>.csv` and the page with
    the tables spliced in. `complete`: every table of the results is in `made`, so a marker
    in the page that names none of them is an error."""
    files: dict[Path, str] = {}
    for table in made:
        files[results / f"{table.name}.md"] = table.markdown()
        files[results / f"{table.name}.csv"] = table.csv()
    page = results.with_suffix(".md")
    if page.is_file():
        files[page] = splice(page.read_text(encoding="utf-8"), made, complete, page)
    return files


def splice(text: str, made: list[Table], complete: bool, page: Path) -> str:
    """`text` with every marked block of a table in `made` replaced by that table."""
    by_name = {table.name: table.markdown() for table in made}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in by_name:
            if complete:
                raise ResultsError(f"{page}: marker results:{name} names no generated table")
            return match.group(0)
        return f"<!-- results:{name} -->\n{by_name[name]}<!-- /results:{name} -->"

    return MARKER.sub(fill, text)


def stale(results: Path, files: dict[Path, str]) -> list[Path]:
    """Tables in `results` that no saved data derive."""
    return [
        p for p in sorted(results.glob("*.md")) + sorted(results.glob("*.csv")) if p not in files
    ]


def check(results: Path, names: list[str]) -> str | None:
    """The first difference between the files on disk and what the saved data derive, as
    one line; None if there is none."""
    made = derive(results, names)
    files = expected(results, made, complete=not names)
    for path, text in files.items():
        if not path.is_file():
            return f"{path}: missing (the saved data derive it)"
        if path.read_text(encoding="utf-8") != text:
            return f"{path}: differs from what the saved data derive"
    extra = stale(results, files) if not names else []
    return f"{extra[0]}: no saved data derive it" if extra else None


def write(
    results: Path, names: list[str], plots: bool = True, made: list[Table] | None = None
) -> list[Path]:
    """Write every table of `names` (all if empty; `made` if derived already), splice them
    into the page, redraw the plots; the files written."""
    made = derive(results, names) if made is None else made
    files = expected(results, made, complete=not names)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    if plots:
        for data in sources(results, names):
            draw = getattr(experiment(data), PLOTS, None)
            if draw is not None:
                draw(data, results / "img")
    return list(files)


def publish(data: Path, results: Path) -> None:
    """Show the tables made from the saved data in `data`, write them and the plots under
    `results`, and splice them into the results page (a script, once it has saved `data`)."""
    made = derive(results, [data.name])
    show(made)
    for path in write(results, [data.name], made=made):
        print(f"wrote {path}")
