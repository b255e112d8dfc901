"""Real classification models from PyPI packages, fetched as ``edge-agent models fetch`` does.

``text-direction``: PaddleOCR's text direction classifier (``ch_ppocr_mobile_v2.0_cls``,
[N, 3, 48, 192] in, [N, 2] probabilities out: upright or upside down) as shipped inside the
``rapidocr-onnxruntime`` wheel (Apache-2.0). ``pip download --no-deps`` fetches the wheel,
pinned by its digest, and the ONNX file is read out of it; nothing is installed and no
model hub is contacted. Its configuration for ``models.detectors`` is ``TEXT_DIRECTION``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.inference.download import archive_members, download_package, onnx_loads, write_atomic

Progress = Callable[[str, float | None], None]

RAPIDOCR_PACKAGE = ("rapidocr-onnxruntime", "1.4.4")
RAPIDOCR_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
TEXT_DIRECTION_MEMBER = "/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
TEXT_DIRECTION_ONNX = "text-direction/model.onnx"
TEXT_DIRECTION_LABELS = "text-direction/labels.txt"

TEXT_DIRECTION: dict[str, Any] = {
    "path": TEXT_DIRECTION_ONNX,
    "type": "classify",
    "labels": TEXT_DIRECTION_LABELS,
    "input_size": [192, 48],
    "color": "bgr",
    "classify": {"resize": "letterbox", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                 "top_k": 2},
}
"""``models.detectors`` entry for the fetched model, as PaddleOCR feeds it: BGR, height 48,
scaled to -1..1."""


def fetch_text_direction(models_dir: Path, progress: Progress) -> None:
    """The text direction classifier and its two labels, from the rapidocr wheel."""
    output = models_dir / TEXT_DIRECTION_ONNX
    labels = models_dir / TEXT_DIRECTION_LABELS
    if labels.is_file() and onnx_loads(output):
        progress("already present", 1.0)
        return
    package, version = RAPIDOCR_PACKAGE
    progress(f"getting {package} {version} (a 15 MB download unless cached)", 0.0)
    archive = download_package(package, version, models_dir / "cache", RAPIDOCR_SHA256)
    model = archive_members(archive, (TEXT_DIRECTION_MEMBER,))[TEXT_DIRECTION_MEMBER]
    write_atomic(output, model)
    # PaddleOCR's label_list is ['0', '180']: the text's rotation in degrees.
    write_atomic(labels, b"upright\nupside down\n")
    progress(f"wrote {output} ({len(model) / 1e6:.1f} MB)", 1.0)
