"""Weights by name or folder, and weight files checked before any library reads them.

`resolve_weights("bruiiii/See3D")` returns a local folder: a path that exists is used as it is;
anything else is taken as a Hugging Face repository id and resolved through `huggingface_hub`'s
cache (downloaded on first use when the network is there; `offline=True` or `HF_HUB_OFFLINE=1`
uses the cache only). `allow_patterns` limits a download to the files a command needs (the
released See3D repository is ~15 GB with three UNets).

`check_safetensors(path)` reads a safetensors header and compares the file's size with what
the header promises, so a truncated file or a partial download is reported by name instead of
as a library traceback deep inside a load. Framework-free: `huggingface_hub` is imported only
when a repository id is resolved.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

RELEASED_SEE3D_REPO = "bruiiii/See3D"  # the authors' Hugging Face repository (their README)
DEPTH_ANYTHING_REPO = "depth-anything/Depth-Anything-V2-Small-hf"
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                           "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


class WeightsError(ValueError):
    """A weights folder or file that cannot be used; the message names the file and the problem."""


def is_repo_id(name: str) -> bool:
    """`owner/name` with no path that exists locally."""
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "~")) and not Path(name).exists()


def resolve_weights(name_or_path: str | os.PathLike, *, allow_patterns: Iterable[str] | None = None, offline: bool | None = None,
                    marker: str | None = None, argument: str = "weights") -> Path:
    """A local folder for `name_or_path` (a folder, or a Hugging Face repository id).

    offline: None reads `HF_HUB_OFFLINE`; True never touches the network (the cache must hold
        the files). marker: a file the folder must contain (e.g. "model_index.json"); when a
        snapshot has it only in one subfolder (e.g. `MVD_weights/`), that subfolder is returned.
    Raises FileNotFoundError / WeightsError naming `argument` and what was expected.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"--{argument} {path}: expected a folder, got a file")
        return _find_marker(path, marker, argument)
    if not is_repo_id(str(name_or_path)):
        raise FileNotFoundError(f"--{argument} {name_or_path}: no such folder, and not a Hugging Face repository id (owner/name)")
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - diffusers and transformers depend on it
        raise WeightsError(f"--{argument} {name_or_path}: resolving a repository id needs huggingface_hub (pip install huggingface_hub)") from e
    try:
        folder = snapshot_download(str(name_or_path), allow_patterns=list(allow_patterns) if allow_patterns else None,
                                   local_files_only=bool(offline))
    except Exception as e:  # the hub raises several classes (offline, missing repo, network): one named error
        where = "the local Hugging Face cache (offline)" if offline else "the Hugging Face hub"
        raise WeightsError(f"--{argument} {name_or_path}: could not be resolved from {where}: {type(e).__name__}: {e}") from e
    return _find_marker(Path(folder), marker, argument)


def _find_marker(folder: Path, marker: str | None, argument: str) -> Path:
    if marker is None or (folder / marker).exists():
        return folder
    inside = sorted(p.parent for p in folder.glob(f"*/{marker}"))
    if len(inside) == 1:
        return inside[0]
    raise WeightsError(f"--{argument} {folder}: expected {marker} in the folder"
                       + (f" (found it in several subfolders: {[str(p) for p in inside]})" if inside else ""))


def safetensors_header(path: str | os.PathLike) -> dict:
    """The tensor table {name: {"dtype", "shape", "data_offsets"}} of a safetensors file, after
    checking that the file is complete; raises WeightsError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: not a safetensors file ({size} bytes; a safetensors file starts with an 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length <= 1 or 8 + length > size:
            raise WeightsError(f"{path}: corrupt or truncated safetensors header (header length {length}, file {size} bytes)"
                               " - a partial download? delete it and fetch it again")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            count = 1
            for n in entry["shape"]:
                count *= int(n)
            nbytes = count * SAFETENSORS_DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: corrupt safetensors entry for tensor {name!r}: {entry!r}") from e
        if stop - begin != nbytes:
            raise WeightsError(f"{path}: tensor {name!r} has {stop - begin} bytes for shape {entry['shape']} {entry['dtype']} ({nbytes} expected)")
        end = max(end, stop)
    if 8 + length + end != size:
        raise WeightsError(f"{path}: truncated or padded: the header describes {8 + length + end} bytes, the file has {size}"
                           " - a partial download? delete it and fetch it again")
    return header


def check_tensor_shapes(path: str | os.PathLike, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Compare a safetensors file's tensors with `expected` {name: shape}; raise WeightsError
    naming the file and the first missing, unexpected or mis-shaped tensors."""
    header = safetensors_header(path)
    got = {k: tuple(v["shape"]) for k, v in header.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[:3]})")
    if wrong:
        problems.append("wrong shapes: " + ", ".join(f"{k} {got[k]} (expected {tuple(expected[k])})" for k in wrong[:3]))
    if problems:
        raise WeightsError(f"{path}: does not match the {what}: " + "; ".join(problems))
