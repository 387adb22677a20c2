"""The Merkle tree over committed batches: pymerkle against a hashlib tree of our own.

For a ledger of --leaves batches (65,536 events each: 20,000 leaves is 1.3 billion events),
the seconds to build the tree and take its root, and to take the root at every size (what
anchoring a kept head and `--since` do). Writes benchmarks/out/merkle.json.

    python benchmarks/merkle.py [--leaves 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from ledger.merkle import Tree, entry

OUT = Path(__file__).parent / "out" / "merkle.json"


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def hashlib_roots(entries: list[bytes]) -> list[bytes]:
    """The RFC 9162 root at every size, from a stack of perfect subtrees."""
    stack: list[tuple[bytes, int]] = []
    roots = []
    for data in entries:
        h, size = hashlib.sha256(b"\x00" + data).digest(), 1
        while stack and stack[-1][1] == size:
            h, size = _node(stack.pop()[0], h), size * 2
        stack.append((h, size))
        root = stack[-1][0]
        for below, _ in reversed(stack[:-1]):
            root = _node(below, root)
        roots.append(root)
    return roots


def _seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    leaves = [(hashlib.sha256(str(i).encode()).hexdigest(), i << 16, (i << 16) + 65_535)
              for i in range(args.leaves)]  # fmt: skip

    def pymerkle_tree() -> Tree:
        tree = Tree()
        for leaf in leaves:
            tree.append(*leaf)
        return tree

    tree = pymerkle_tree()
    ours = hashlib_roots([entry(*leaf) for leaf in leaves])
    assert ours[-1].hex() == tree.head().root, "the two trees disagree"
    figures = {
        "leaves": args.leaves,
        "pymerkle_build_and_root_s": _seconds(lambda: pymerkle_tree().head(), args.repeat),
        "pymerkle_every_root_s": _seconds(tree.heads, args.repeat),
        "hashlib_every_root_s": _seconds(
            lambda: hashlib_roots([entry(*leaf) for leaf in leaves]), args.repeat
        ),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in figures.items():
        print(f"{name:28} {value:,.3f}" if isinstance(value, float) else f"{name:28} {value:,}")


if __name__ == "__main__":
    main()
