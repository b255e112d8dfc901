"""Constant-output ONNX graphs for classification, segmentation and pose, with known answers.

Every shape is placed in model-input pixels inside the square ``[160, 480]`` of a 640x640
input, which any frame of aspect ratio between 3:4 and 16:9 covers after letterboxing, so
the same model serves frames of several sizes and the expected answer in a frame is the
input-pixel answer mapped back through that frame's letterbox.

Segmentation masks are exact by construction: each prototype is a linear function of the
position (bilinear interpolation reproduces a linear function exactly, so its zero line is
exactly where the model put it), and each object's box cuts its half-plane into a known
polygon. Prototype 0 is positive where ``x < SEG_EDGE`` (object A: a rectangle, three sides
from the box and one from the mask); prototype 1 where ``x + y < SEG_LINE`` (object B: a
box with a corner cut off diagonally).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.inference.config import COCO_KEYPOINTS
from agent.inference.letterbox import letterbox_geometry
from scripts.harness.onnx_graphs import constant_model

INPUT = 640
PROTO = INPUT // 4

SEG_LABELS = ["person", "bottle"]
SEG_EDGE = 300.0
SEG_BOX_A = (180.0, 180.0, 340.0, 320.0)
"""Object A's box; its mask ends at x = SEG_EDGE, inside the box."""
SEG_BOX_B = (360.0, 220.0, 460.0, 420.0)
"""Object B's box: its mask (x + y < SEG_LINE) is cut by the box."""
SEG_LINE = 720.0
SEG_SCORES = (0.9, 0.85)


def seg_expected_input() -> list[np.ndarray]:
    """The two outlines in input pixels: A's rectangle, B's box cut by the line."""
    x1, y1, _, y2 = SEG_BOX_A
    x2 = SEG_EDGE
    a = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    bx1, by1, bx2, _ = SEG_BOX_B
    b = np.array([[bx1, by1], [bx2, by1], [bx2, SEG_LINE - bx2], [bx1, SEG_LINE - bx1]],
                 np.float32)
    return [a, b]


def segment_output(rows: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``[1, 4+2+2, rows]`` candidates and ``[1, 2, 160, 160]`` prototypes."""
    classes, masks = len(SEG_LABELS), 2
    table = np.zeros((4 + classes + masks, rows), np.float32)
    rng = np.random.default_rng(7)
    # Background: small boxes with scores far under any threshold.
    table[0:2] = rng.uniform(0, INPUT, (2, rows))
    table[2:4] = 20.0
    table[4:4 + classes] = rng.uniform(0.0, 0.05, (classes, rows))

    def put(col: int, xyxy: Sequence[float], cls: int, score: float, coeff: Sequence[float]
            ) -> None:
        x1, y1, x2, y2 = xyxy
        table[0:4, col] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        table[4:4 + classes, col] = 0.0
        table[4 + cls, col] = score
        table[4 + classes:, col] = coeff

    put(3, SEG_BOX_A, 0, SEG_SCORES[0], (1.0, 0.0))
    put(11, SEG_BOX_B, 1, SEG_SCORES[1], (0.0, 1.0))
    # Weaker, shifted duplicates that NMS must remove (with masks that would be wrong).
    put(12, [v + 3 for v in SEG_BOX_A], 0, 0.6, (0.0, 1.0))
    put(13, [v + 3 for v in SEG_BOX_B], 1, 0.5, (1.0, 0.0))
    protos = np.zeros((masks, PROTO, PROTO), np.float32)
    centres = np.arange(PROTO, dtype=np.float32) + 0.5
    u, v = np.meshgrid(centres, centres)  # proto coordinates of pixel centres (x, y)
    protos[0] = (SEG_EDGE / 4.0) - u  # positive (object) where x < SEG_EDGE
    protos[1] = (SEG_LINE / 4.0) - (u + v)  # positive (object) where x + y < SEG_LINE
    return table[None], protos[None]


def segment_model(path: Path, transposed: bool = False) -> Path:
    table, protos = segment_output()
    if transposed:
        table = table.transpose(0, 2, 1)
    return constant_model(path, [table, protos])


POSE_BOX = (180.0, 160.0, 460.0, 470.0)
POSE_SCORE = 0.88


def pose_keypoints_input() -> np.ndarray:
    """``[17, 3]`` keypoints in input pixels with confidences (two of them weak)."""
    k = len(COCO_KEYPOINTS)
    out = np.zeros((k, 3), np.float32)
    out[:, 0] = 200.0 + 15.0 * np.arange(k)
    out[:, 1] = 170.0 + 17.5 * np.arange(k)
    out[:, 2] = 0.95
    out[3, 2] = 0.1
    out[4, 2] = 0.2
    return out


def pose_output(rows: int = 100) -> np.ndarray:
    """``[1, 4+1+17*3, rows]``: one person with the known keypoints, one weaker duplicate."""
    k = len(COCO_KEYPOINTS)
    table = np.zeros((4 + 1 + 3 * k, rows), np.float32)
    table[0:2] = 320.0
    table[2:4] = 10.0
    table[4] = 0.01
    x1, y1, x2, y2 = POSE_BOX
    kp = pose_keypoints_input()
    for col, shift, score in ((5, 0.0, POSE_SCORE), (6, 4.0, 0.5)):
        table[0:4, col] = [(x1 + x2) / 2 + shift, (y1 + y2) / 2, x2 - x1, y2 - y1]
        table[4, col] = score
        table[5:, col] = (kp + np.array([shift, 0, 0], np.float32)).reshape(-1)
    return table[None]


def pose_model(path: Path) -> Path:
    return constant_model(path, [pose_output()])


CLS_LABELS = ["good", "scratched", "dented"]
CLS_LOGITS = (0.5, 3.0, -1.0)
"""Logits: softmax gives scratched 0.9088, good 0.0746, dented 0.0166."""


def classifier_model(path: Path, scores: Sequence[float] = CLS_LOGITS, size: int = 64) -> Path:
    return constant_model(path, [np.asarray([scores], np.float32)], (1, 3, size, size))


def to_frame(points: np.ndarray, frame_wh: tuple[int, int]) -> np.ndarray:
    """Input-pixel points mapped into a frame of ``frame_wh`` through its letterbox."""
    box = letterbox_geometry((frame_wh[1], frame_wh[0]), (INPUT, INPUT))
    out = np.asarray(points, np.float32).copy()
    out[..., 0] = (out[..., 0] - box.pad[0]) / box.scale[0]
    out[..., 1] = (out[..., 1] - box.pad[1]) / box.scale[1]
    return out


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points ``p`` [N, 2] to the segment a-b."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def outline_error(outline: np.ndarray, expected: np.ndarray) -> float:
    """Symmetric distance (pixels) between two closed polygons: every vertex of each to the
    other's boundary, and the midpoints of the expected edges to the outline."""
    def to_boundary(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
        nxt = np.roll(poly, -1, axis=0)
        return np.min([segment_distance(points, a, b) for a, b in zip(poly, nxt, strict=True)],
                      axis=0)

    outline = np.asarray(outline, np.float64)
    expected = np.asarray(expected, np.float64)
    mids = (expected + np.roll(expected, -1, axis=0)) / 2
    probes = np.concatenate([expected, mids])
    return float(max(to_boundary(outline, expected).max(), to_boundary(probes, outline).max()))
