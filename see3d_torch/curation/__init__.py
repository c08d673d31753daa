"""WebVi3D curation: keep videos of static scenes seen by a moving camera, cut them into clips.

Steps (SPEC.md sections 1 and 3): (1) temporal/spatial downsampling (`io`), (2) semantic
dynamic recognition behind a detector interface (`detectors`), (3) static-camera precheck,
dense flow and Sampson-error dynamic masks (`flow`, `geometry`), (4) point tracks and robust
minimum enclosing circles (`tracks`); accepted videos are cut into static clips (`split`).
`pipeline.decide` makes the decision for one video in memory; `runner.curate` runs a
directory with manifests, resuming, worker processes or Ray. Command: `see3d-curate`.
"""

from see3d_torch.curation.config import CurationConfig
from see3d_torch.curation.runner import curate

__all__ = ["CurationConfig", "curate"]
