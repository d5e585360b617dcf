"""The package as users get it: the wheel holds `hnc_jax` alone and works from any directory,
the library imports neither TensorFlow nor torch, the subpackages import no cycle, and the
docs' relative links resolve."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hnc_jax

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hnc_jax"
LIBRARY = ("losses", "models", "cam", "wsol", "multilabel", "figures")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported hnc_jax module, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((child, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:  # `from pkg import module` or `from module import x`
                    candidate = f"{child.module}.{alias.name}"
                    module = candidate if _exists(candidate) else child.module
                    found.append((child, module, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        edges = {m for _, m, _ in _imports(path) if m.startswith("hnc_jax") and _exists(m)}
        graph[_module_name(path)] = edges - {_module_name(path), "hnc_jax"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []  # The modules on the current search path.

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        done.add(path.pop())
        return None

    for node in sorted(graph):
        if node not in done and (found := visit(node)):
            return found
    return None


def test_cycle_finder_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_function_level_imports_included():
    graph = _graph()
    assert {"hnc_jax.losses", "hnc_jax.training.loop", "hnc_jax.study.sweep"} <= set(graph)
    assert "hnc_jax.training.checkpoints" in graph["hnc_jax.training.loop"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_function_level_imports_say_why():
    """A function-level import defers a heavy or optional dependency on purpose: a comment on
    its line, or on its block of imports or the line above that block, says so."""
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node, module, in_function in _imports(path):
            first = node.lineno - 1
            while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                first -= 1
            near = lines[max(first - 1, 0) : node.end_lineno]
            if in_function and not any("#" in line for line in near):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno} {module}")
    assert not unexplained, unexplained


def test_library_imports_neither_tensorflow_nor_torch():
    code = (
        "import sys\n"
        f"from hnc_jax import {', '.join(LIBRARY)}\n"
        "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from a copy of the checkout (setuptools from the venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    patterns = shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info")

    def ignore(directory: str, names: list[str]) -> set[str]:
        # Training runs' workdirs at the top only: hnc_jax/training/workdirs.py is a module.
        top = {n for n in names if n.startswith("workdir")} if Path(directory) == REPO else set()
        return patterns(directory, names) | top

    shutil.copytree(REPO, tmp / "src", ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    out = subprocess.run([*cmd, "-w", str(tmp / "dist"), str(tmp / "src")], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    (found,) = (tmp / "dist").glob("hnc_jax-*.whl")
    return found


@pytest.mark.slow
def test_wheel_holds_the_package_alone(wheel):
    assert wheel.name.startswith(f"hnc_jax-{hnc_jax.__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"hnc_jax", f"hnc_jax-{hnc_jax.__version__}.dist-info"}, tops
    shipped = {name for name in names if name.endswith(".py")}
    in_tree = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")}
    assert shipped == in_tree  # Every module, subpackages included; no tests, configs, docs.
    metadata = zipfile.ZipFile(wheel).read(f"{sorted(tops)[1]}/METADATA").decode()
    requires = re.findall(r"^Requires-Dist: ([\w-]+)", metadata, re.M)
    assert {"jax", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets"} <= set(requires)
    extras = set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.M))
    assert {"tpu", "cuda", "torch", "test"} <= extras


@pytest.mark.slow
def test_installed_wheel_computes_a_loss_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
    out = subprocess.run([*cmd, "--target", str(target), str(wheel)], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    code = """
import numpy as np
import hnc_jax
from hnc_jax import losses, models
cams = np.zeros((2, 3, 3, 4), np.float32); cams[:, 0, 0, :] = [1.0, 2.0, 3.0, 4.0]
print(hnc_jax.__file__, hnc_jax.__version__, float(losses.hnc_mse(cams, np.array([3, 0]), k=2)))
"""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    location, version, value = run.stdout.split()
    assert Path(location).is_relative_to(target) and version == hnc_jax.__version__
    # Image 0 (label 3): negatives 2 and 1 hold 3 and 2 at one of 9 cells; image 1 (label 0):
    # 3 and 4 at one cell. (9 + 4 + 16 + 9) / (2 images * 2 maps * 9 cells).
    assert float(value) == pytest.approx((9 + 4 + 16 + 9) / 36)


def _markdown_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_relative_links_resolve():
    broken = []
    for page in _markdown_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert len(_markdown_pages()) > 3 and not broken, broken


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in ("training", "data", "weights", "cams", "study", "benchmarks", "testing"):
        assert f"docs/{page}.md" in readme, page


@pytest.mark.slow
def test_readme_code_runs(tmp_path):
    """The README's Python blocks, in order, in one fresh process (as a reader pastes them)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2 and "hnc_from_features" in blocks[0]
    code = "\n".join(blocks) + "\nprint('head' in grads, logits.shape, cams.shape)\n"
    env = {"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "True (2, 1000) (2, 7, 7, 1000)"
