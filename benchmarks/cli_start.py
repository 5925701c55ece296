"""How fast the command line answers: ``--help`` and the refusal of a bad value (target: 1 s).

Each command runs in a fresh interpreter (``python -m sloguard.cli ...``), best of ``--repeats``
wall-clock times. With ``--against REF`` the same commands also run on a temporary git worktree
of REF, side by side, with the ratio. Then ``python -X importtime`` shows which imports the
refusal of a bad value still pays for (cumulative microseconds, largest first).

Usage:
    python benchmarks/cli_start.py
    python benchmarks/cli_start.py --against d163cdd --repeats 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    ("--help",),
    ("tune", "--help"),
    ("evaluate", "--help"),
    ("report", "--help"),
    ("sync", "--help"),
    ("tune", "workers=0"),  # a bad value: refused with one line, exit 2
    ("evaluate", "optimizer=nope"),
    ("tune", "hardware=h100"),  # an unknown option of a config group
)


def _seconds(tree: Path, args: tuple[str, ...], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sloguard.cli", *args],
            cwd=tree,
            env=env,
            capture_output=True,
            check=False,
        )
        best = min(best, time.perf_counter() - start)
    return best


def _imports(tree: Path, args: tuple[str, ...], top: int) -> list[tuple[int, str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sloguard.cli", *args],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # top level only
                rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git ref to time beside this tree")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO}
        if args.against:
            old = Path(tmp) / "old"
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(REPO),
                    "worktree",
                    "add",
                    "-q",
                    "--detach",
                    str(old),
                    args.against,
                ],
                check=True,
            )
            trees = {args.against: old, **trees}
        try:
            print(f"seconds, best of {args.repeats}, python -m sloguard.cli ...")
            print(f"{'command':32s}" + "".join(f"{name:>14s}" for name in trees)
                  + ("   ratio" if len(trees) == 2 else ""))  # fmt: skip
            for command in COMMANDS:
                times = [_seconds(tree, command, args.repeats) for tree in trees.values()]
                ratio = f"{times[0] / times[1]:7.1f}x" if len(times) == 2 else ""
                print(f"{' '.join(command):32s}" + "".join(f"{t:14.2f}" for t in times) + ratio)
        finally:
            if args.against:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True
                )
    print("\nimports of `tune workers=0` in this tree (top level, cumulative ms):")
    for micros, name in _imports(REPO, ("tune", "workers=0"), top=8):
        print(f"  {micros / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
