"""Running curation over a directory: manifests, resuming, clip writing, processes and Ray.

Each video is handled by `curate_one` (read, decide, write its clips), which is what worker
processes and Ray tasks run. Only the driver appends to the manifests, so lines never
interleave. Order of events for one video: clip directories are written atomically (temporary
directory, then rename), then their lines go to `clips/manifest.jsonl`, then the video's line
goes to `manifest.jsonl`. A video counts as done only once its line is there; on start-up
`reconcile` removes whatever a killed run left after its last finished video.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterable, Iterator

from see3d_core.clips import read_info, read_manifest, write_clip
from see3d_torch.curation import detectors, pipeline
from see3d_torch.curation.config import CurationConfig
from see3d_torch.curation.io import UnreadableVideoError, find_inputs, read_downsampled

MANIFEST = "manifest.jsonl"
CLIPS_DIR = "clips"
_DETECTOR_CACHE: dict[Any, tuple[detectors.Detector | None, str | None]] = {}


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_lines_atomically(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def clip_prefix(video: str) -> str:
    """A directory-name-safe, collision-free prefix for the clips of `video` (a relative path)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", video).strip("._")[-80:]
    return f"{slug}-{hashlib.sha1(video.encode()).hexdigest()[:8]}"


def _video_seed(video: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{video}".encode()).digest()[:4], "little")


def _detector(config: CurationConfig, given: detectors.Detector | None) -> tuple[detectors.Detector | None, str | None]:
    """The detector for step 2 and, when there is none, why (cached per process)."""
    if given is not None:
        return given, None
    key = config.semantic
    if key not in _DETECTOR_CACHE:
        try:
            found = detectors.load_detector(config.semantic)
            _DETECTOR_CACHE[key] = (found, None if found else "detector disabled in the config (semantic.detector = 'none')")
        except detectors.DetectorUnavailable as e:
            _DETECTOR_CACHE[key] = (None, str(e))
    return _DETECTOR_CACHE[key]


def curate_one(input_root: str, video: str, output_root: str, config: CurationConfig,
               detector: detectors.Detector | None = None) -> dict[str, Any]:
    """Curate one video and write its clips; returns its manifest record (never raises for bad input)."""
    import cv2

    cv2.setNumThreads(1)  # one video per core: parallelism comes from workers
    start = time.perf_counter()
    record: dict[str, Any] = {"video": video}
    try:
        downsampled = read_downsampled(Path(input_root) / video, config.downsample)
    except (UnreadableVideoError, OSError, cv2.error) as e:
        return record | {"status": "error", "reason": "unreadable", "message": str(e), "clips": [], "scores": {},
                         "steps": {"downsample": {"status": "ran", "error": str(e)}}, "timings": {}}
    read_s = time.perf_counter() - start
    try:
        found, why = _detector(config, detector)
        decision = pipeline.decide(downsampled, config, found, why, seed=_video_seed(video, config.seed))
        clip_paths = _write_clips(Path(output_root), video, downsampled, decision, config)
    except Exception as e:  # a bug or an odd input must not stop a run over millions of videos
        return record | {"status": "error", "reason": "unreadable", "message": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(limit=5), "clips": [], "scores": {}, "steps": {}, "timings": {}}
    timings = {"read": round(read_s, 4), **decision.timings, "total": round(time.perf_counter() - start, 4)}
    return record | {"status": decision.status, "reason": decision.reason, "clips": clip_paths,
                     "scores": decision.scores, "steps": decision.steps, "timings": timings}


def _write_clips(output_root: Path, video: str, downsampled, decision: pipeline.Decision, config: CurationConfig) -> list[str]:
    clips_root = output_root / CLIPS_DIR
    clips_root.mkdir(parents=True, exist_ok=True)
    paths = []
    prefix = clip_prefix(video)
    for k, (a, b) in enumerate(decision.clip_ranges):
        name = f"{prefix}_c{k:03d}"
        if (clips_root / name).exists():  # left by a run killed before this video's line was written
            shutil.rmtree(clips_root / name)
        write_clip(clips_root / name, downsampled.frames[a:b], source=video, fps=downsampled.fps,
                   frame_indices=downsampled.source_indices[a:b].tolist(), image_format=config.clips.image_format)
        paths.append(f"{CLIPS_DIR}/{name}")
    return paths


def reconcile(output_root: Path) -> dict[str, dict[str, Any]]:
    """Bring OUTPUT back to the state after its last finished video; returns finished records by video.

    Drops a half-written last manifest line, clip manifest lines and clip directories that no
    finished video lists, and temporary directories of killed writers."""
    manifest = output_root / MANIFEST
    records = read_manifest(manifest)
    if manifest.exists() and not manifest.read_text().endswith("\n") and manifest.stat().st_size:
        _write_lines_atomically(manifest, records)  # drop the half-written last line
    done = {r["video"]: r for r in records}
    listed = [c for r in records for c in r.get("clips", [])]
    clips_root = output_root / CLIPS_DIR
    if clips_root.is_dir():
        clip_manifest = clips_root / MANIFEST
        entries = read_manifest(clip_manifest)
        wanted = {c.split("/", 1)[1] for c in listed}
        kept = [e for e in entries if e.get("clip") in wanted]
        present = {e["clip"] for e in kept}
        for c in listed:  # a clip of a finished video whose manifest line was lost
            name = c.split("/", 1)[1]
            if name not in present:
                info = read_info(clips_root / name)
                kept.append({"clip": name, "num_frames": info.num_frames, "width": info.width, "height": info.height, "posed": info.posed})
        if kept != entries or (clip_manifest.exists() and clip_manifest.stat().st_size and not clip_manifest.read_text().endswith("\n")):
            _write_lines_atomically(clip_manifest, kept)
        for child in clips_root.iterdir():
            if child.is_dir() and child.name not in wanted:
                shutil.rmtree(child)
    return done


def _record_clips(output_root: Path, clip_paths: list[str]) -> None:
    clip_manifest = output_root / CLIPS_DIR / MANIFEST
    for c in clip_paths:
        info = read_info(output_root / c)
        _append_line(clip_manifest, {"clip": c.split("/", 1)[1], "num_frames": info.num_frames, "width": info.width,
                                     "height": info.height, "posed": info.posed})


def _in_process(jobs: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for job in jobs:
            yield curate_one(*job)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = set()
        queue = iter(jobs)
        for job in queue:  # a bounded window keeps memory flat on huge inputs
            pending.add(pool.submit(curate_one, *job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                job = next(queue, None)
                if job is not None:
                    pending.add(pool.submit(curate_one, *job))


def _on_ray(jobs: list[tuple], address: str, workers: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs the 'ray' package: pip install 'see3d-kit[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(curate_one)
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", workers)))
        queue = iter(jobs)
        pending = [task.remote(*job) for _, job in zip(range(window), queue)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
            job = next(queue, None)
            if job is not None:
                pending.append(task.remote(*job))
    finally:
        if started:
            ray.shutdown()


def curate(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *, config: CurationConfig | str | os.PathLike | None = None,
           workers: int = 1, ray: str | None = None, detector: detectors.Detector | str | None = None,
           progress: bool = True, **options: Any) -> list[dict[str, Any]]:
    """Curate every video and frame folder under `input_dir` into `output_dir`.

    `config` is a `CurationConfig` or a JSON/TOML file; further keyword options change single
    fields (e.g. `temporal_stride=3`, `detector="none"`). `workers` processes run in parallel,
    or, with `ray` (a cluster address, or "local" to start one with `workers` CPUs), Ray tasks
    do (OUTPUT must then be on storage every node sees). `detector` replaces the configured
    step-2 detector (anything with `name` and `detect`; picklable for workers; a string names
    the configured one, e.g. "none"). Videos already
    in `output_dir/manifest.jsonl` are skipped. Returns the records of this run."""
    input_root, output_root = Path(input_dir), Path(output_dir)
    if not input_root.is_dir():
        raise FileNotFoundError(f"curation input {input_root} is not a directory")
    if isinstance(detector, str):
        options["detector"], detector = detector, None
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if config is None:
        config = CurationConfig()
    elif not isinstance(config, CurationConfig):
        config = CurationConfig.from_file(config)
    config = config.with_options(**options)
    output_root.mkdir(parents=True, exist_ok=True)
    done = reconcile(output_root)
    todo = [v for v in find_inputs(input_root) if v not in done]
    jobs = [(str(input_root), v, str(output_root), config, detector) for v in todo]
    results = _on_ray(jobs, ray, workers) if ray else _in_process(jobs, workers)
    records = []
    bar = _progress(len(jobs), len(done), progress)
    try:
        for record in results:
            _record_clips(output_root, record["clips"])
            _append_line(output_root / MANIFEST, record)
            records.append(record)
            bar.update(1)
            bar.set_postfix(accepted=sum(r["status"] == "accepted" for r in records), refresh=False)
    finally:
        bar.close()
    return records


def _progress(total: int, already: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc=f"curate ({already} done before)" if already else "curate",
                disable=not enabled, dynamic_ncols=True)


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and reason, and the number of clips."""
    records = list(records)
    reasons: dict[str, int] = {}
    for r in records:
        if r["status"] != "accepted":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {"videos": len(records), "accepted": sum(r["status"] == "accepted" for r in records),
            "rejected": sum(r["status"] == "rejected" for r in records), "errors": sum(r["status"] == "error" for r in records),
            "reasons": reasons, "clips": sum(len(r["clips"]) for r in records)}
