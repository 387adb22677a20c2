"""Rewrite, or check, every generated table in docs/results/ from the saved run outputs.

Each directory `<results>/data/<name>/` holds one experiment's saved tables and a
source.json naming the experiment; the experiment script's `tables(data)` makes its tables
(docs/results.md, its opening). Without --check, writes `<results>/<table>.md` and `.csv`, the
plots under `<results>/img/`, and splices each table into `<results>.md` between
`<!-- results:<table> -->` and `<!-- /results:<table> -->`. With --check, derives them in
memory and exits 1 naming the first file that differs (plots are not checked).

    python experiments/regenerate.py [--check] [--results docs/results] [NAME ...]
"""

from __future__ import annotations

import sys

sys.path.append(sys.path.pop(0))  # this folder after the packages: `gymnasium` is Gymnasium

import argparse
from pathlib import Path

from generated import RESULTS, ResultsError, check, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", help="saved data directories (default: all)")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problem = check(args.results, args.names)
            if problem:
                print(f"regenerate --check: {problem}", file=sys.stderr)
                return 1
            print(f"{args.results}: every table matches its saved data")
            return 0
        for path in write(args.results, args.names, plots=not args.no_plots):
            print(f"wrote {path}")
    except (ResultsError, OSError) as error:
        print(f"regenerate: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
