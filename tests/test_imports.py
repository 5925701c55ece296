"""The package's modules import one another without a circle (imports inside functions too)."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys

from tests.conftest import REPO


def _import_graph() -> dict[str, set[str]]:
    files = {}
    for path in (REPO / "sloguard").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sloguard"):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                # `from pkg import submodule` needs the submodule; other names need pkg itself
                wanted = [s for s in subs if s in files]
                wanted += [str(node.module)] if len(wanted) < len(subs) else []
            elif isinstance(node, ast.Import):
                wanted = [a.name for a in node.names if a.name.startswith("sloguard")]
            else:
                continue
            graph[name] |= {w for w in wanted if w in files and w != name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    assert len(graph) > 50 and graph["sloguard.tune"]  # the walk found the package
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming a circle


def test_a_bad_command_line_is_refused_without_the_heavy_libraries() -> None:
    """``sloguard tune`` refuses a bad value before MLflow, Optuna, scikit-learn, pandas or torch
    load: the refusal is fast (``benchmarks/cli_start.py`` times it)."""
    heavy = ("mlflow", "optuna", "sklearn", "pandas", "torch", "scipy", "aiohttp")
    code = (
        "import sys\n"
        "from sloguard.exceptions import ConfigError\n"
        "from sloguard.tune import check_overrides\n"
        "try:\n"
        "    check_overrides(['workers=0'])\n"
        "except ConfigError:\n"
        f"    print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == ""
