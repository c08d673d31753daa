"""Packaging contracts: conda and pip name the same dependencies; the two sides of the kit
never import each other's framework."""

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# variants for accelerators are pip-only extras: conda users pick their own CUDA/TPU builds
PIP_ONLY_EXTRAS = {"jax-cuda", "jax-tpu", "torch-cuda"}


def _normalise(req: str) -> str:
    name, spec = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", req.strip()).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra not in PIP_ONLY_EXTRAS:
            wanted |= {_normalise(r) for r in reqs}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    pip_reqs = {_normalise(ln.strip()[2:]) for ln in lines[start + 1 :] if ln.strip().startswith("- ") and not ln.strip().startswith("- -e")}
    assert pip_reqs == wanted, f"only in environment.yml: {sorted(pip_reqs - wanted)}; only in pyproject: {sorted(wanted - pip_reqs)}"


def _modules(package: str) -> list[str]:
    pkg = __import__(package)
    return [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]


@pytest.mark.parametrize("package, forbidden", [("see3d_jax", "torch"), ("see3d_torch", "jax"), ("see3d_core", "torch"), ("see3d_core", "jax")])
def test_import_boundary(package, forbidden):
    modules = _modules(package)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k == {forbidden!r} or k.startswith({forbidden!r} + '.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {package} loaded {forbidden}: {out.stdout.strip()[:200]}"


# what each package may never import, at any level (module top, function bodies, TYPE_CHECKING blocks)
FORBIDDEN_IMPORTS = {
    "see3d_core": ("torch", "jax", "flax", "optax", "orbax", "see3d_jax", "see3d_torch", "see3d_cli"),
    "see3d_jax": ("torch", "diffusers", "transformers", "see3d_torch", "see3d_cli"),
    "see3d_torch": ("jax", "flax", "optax", "orbax", "see3d_jax", "see3d_cli"),
}


def _imported_roots(path: Path) -> list[tuple[int, str]]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_import_boundary_in_the_source_function_level_included(package):
    """The runtime test above only sees module-level imports; a lazy import inside a function
    would cross the boundary only when called. Read every import statement instead."""
    bad = [f"{path.relative_to(ROOT)}:{line} imports {root}"
           for path in sorted((ROOT / package).rglob("*.py"))
           for line, root in _imported_roots(path) if root in FORBIDDEN_IMPORTS[package]]
    assert not bad, "\n".join(bad)


def test_constraints_pin_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "PIP_CONSTRAINT" in (ROOT / "Makefile").read_text()


def test_the_demo_checkpoint_is_package_data():
    """An installed kit finds the embedded demo model: pyproject's package-data patterns cover
    every file of the one model folder in see3d_core."""
    from see3d_core.released_layout import CONFIG_FILE, DEMO_CHECKPOINT, WEIGHTS_FILE

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["see3d_core"]
    package = ROOT / "see3d_core"
    assert DEMO_CHECKPOINT.parent.parent == package
    files = sorted(p.relative_to(package) for p in DEMO_CHECKPOINT.iterdir())
    assert [f.name for f in files] == sorted([CONFIG_FILE, WEIGHTS_FILE])
    assert all(any(f.match(pattern) for pattern in patterns) for f in files), (files, patterns)
