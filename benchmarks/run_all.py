"""Run the kit's quick CPU benchmarks one after another (`make bench`), each in its own process.

    .venv/bin/python benchmarks/run_all.py [--only synthetic,depth_warp,...] [--list]

The long acceptance runs (splatting reconstruction and camera refinement, the 30-minute small
model training and its evaluation) are not part of this; their commands are in RESULTS.md.
Each benchmark prints its own JSON/table; this runner adds the wall time of each and exits
non-zero if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "synthetic": ["bench_synthetic.py"],
    "depth_warp": ["bench_depth_warp.py", "--repeats", "10"],
    "curation": ["bench_curation.py", "--throughput"],
    "splatting_render": ["bench_splatting.py", "--only", "render", "--threads", "1"],
    "train_tiny": ["bench_train.py", "--config", "tiny"],
    "train_small": ["bench_train.py", "--config", "small"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(QUICK), help=f"comma-separated subset of {', '.join(QUICK)}")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in QUICK]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(QUICK)}")
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / QUICK[name][0]), *QUICK[name][1:]]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        if args.list:
            continue
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc}, {time.perf_counter() - t0:.1f} s wall", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
