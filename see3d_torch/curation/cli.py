"""`see3d-curate INPUT OUTPUT [--workers N] [--ray ADDRESS] [--config FILE]`."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="see3d-curate",
        description="WebVi3D curation: keep videos of static scenes seen by a moving camera and cut them into clips. "
        "Writes OUTPUT/manifest.jsonl (one line per video) and a clip dataset under OUTPUT/clips/. "
        "Running again resumes: videos already in the manifest are skipped.",
    )
    parser.add_argument("input", help="directory searched recursively for videos (mp4, mov, mkv, webm, avi) and frame folders")
    parser.add_argument("output", help="output directory (manifest.jsonl, clips/)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (or Ray CPUs with --ray local)")
    parser.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster ('auto', 'ray://host:10001', or 'local' to start one)")
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file with [downsample], [semantic], [motion], [viewpoint], [clips] tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from see3d_torch.curation.runner import curate, summarize

    try:
        records = curate(args.input, args.output, config=args.config, workers=args.workers, ray=args.ray, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        print(f"see3d-curate: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summarize(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
