"""Configuration of the inference stage: ONNX sessions, detectors and their task options,
audio classifiers, the VAD and the motion gate (``models:``, ``cameras[].motion``).

Only pydantic here: loading a configuration must not load numpy, OpenCV or onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

SAMPLE_RATE = 16_000
"""Hz of the audio the models take."""


class SessionConfig(BaseModel):
    """How to run one ONNX file."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="ONNX file; relative paths are under models.dir")
    providers: list[str] = Field(
        default_factory=lambda: ["cpu"],
        description="execution providers in order of preference: tensorrt, cuda, cpu, ...",
    )
    threads: int = Field(default=2, ge=0, description="intra-op threads; 0 lets onnxruntime pick")



# -- vision models ------------------------------------------------------------------------


COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
"""The 17 COCO keypoints in the order Ultralytics pose models output them."""

COCO_SKELETON: tuple[tuple[str, str], ...] = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"),
    ("right_ankle", "right_knee"), ("right_knee", "right_hip"),
    ("left_hip", "right_hip"), ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"), ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"), ("left_eye", "right_eye"), ("nose", "left_eye"),
    ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)
"""Bones drawn between COCO keypoints on annotated images."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyOptions(_Options):
    """``models.detectors.<name>.classify``: how a classifier is fed and read."""

    top_k: int = Field(default=5, ge=1, le=100, description="classes carried per event")
    activation: Literal["auto", "softmax", "none"] = Field(
        default="auto",
        description="auto: softmax when the outputs are logits (a value outside 0..1, or "
        "scores not summing to 1 +- 0.02), else as they are; none: multi-label sigmoid heads",
    )
    resize: Literal["center_crop", "stretch", "letterbox"] = Field(
        default="center_crop",
        description="center_crop: shortest side to the input, centre cut (as Ultralytics "
        "classifiers were trained); stretch: ignore aspect; letterbox: pad with grey",
    )
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="subtracted after scaling, per channel (model order)"
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="divided by after the mean, per channel"
    )


class SegmentOptions(_Options):
    """``models.detectors.<name>.segment``: how masks become outlines."""

    max_points: int = Field(default=64, ge=4, le=1000,
                            description="outline polygon simplified to at most this many points")
    mask_threshold: float = Field(default=0.5, gt=0.0, lt=1.0,
                                  description="sigmoid(coefficients x prototypes) above it is "
                                  "the object")


class PoseOptions(_Options):
    """``models.detectors.<name>.pose``: the keypoints a pose model outputs."""

    keypoints: list[str] = Field(default_factory=lambda: list(COCO_KEYPOINTS), min_length=1,
                                 description="keypoint names in output order")
    skeleton: list[tuple[str, str]] | None = Field(
        default=None, description="bones to draw; default COCO's when keypoints are COCO's"
    )
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0,
                                  description="a keypoint is drawn and used for zones from here")

    def bones(self) -> list[tuple[int, int]]:
        """Index pairs of the bones to draw."""
        edges = self.skeleton
        if edges is None:
            edges = list(COCO_SKELETON) if tuple(self.keypoints) == COCO_KEYPOINTS else []
        index = {n: i for i, n in enumerate(self.keypoints)}
        return [(index[a], index[b]) for a, b in edges if a in index and b in index]



class DetectorModelConfig(SessionConfig):
    """An object-detection model: the ONNX file, its output layout, labels and thresholds."""

    type: Literal[
        "auto", "yolov3", "yolov5", "yolov8", "end2end", "classify", "segment", "pose"
    ] = Field(
        default="auto",
        description="output layout or task (agent.inference.tasks); auto reads it from the "
        "output shapes",
    )
    labels: str = Field(
        default="coco",
        description="'coco' for the shared COCO catalogue, else a label file relative to "
        "models.dir (one name a line, or 'index name' / 'index: name'; # comments)",
    )
    input_size: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None,
        description="(width, height); default: the model's input shape, else 640x640",
    )
    color: Literal["rgb", "bgr"] = Field(default="rgb", description="channel order the model wants")
    scale: float = Field(default=1 / 255, gt=0, description="pixel scale: 1/255 or 1 for 0..255")
    pad_value: float | None = Field(
        default=None, ge=0, le=255,
        description="letterbox grey in 0..255 pixel units; default: 127.5 (Darknet's 0.5) for "
        "a model converted from Darknet, else 114 (Ultralytics)",
    )
    score_threshold: float = Field(default=0.25, ge=0, le=1, description="pre-NMS score floor")
    iou_threshold: float = Field(default=0.45, gt=0, le=1, description="NMS overlap threshold")
    classify: ClassifyOptions = Field(default_factory=ClassifyOptions)
    segment: SegmentOptions = Field(default_factory=SegmentOptions)
    pose: PoseOptions = Field(default_factory=PoseOptions)


# -- audio models -------------------------------------------------------------------------


class Quantization(BaseModel):
    """uint8/int8 affine quantization: ``real = scale * (q - zero_point)``."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(gt=0)
    zero_point: int = Field(ge=-128, le=255)


class LogMelConfig(BaseModel):
    """The log-mel front end of ``logmel`` models (YAMNet's values by default)."""

    model_config = ConfigDict(extra="forbid")

    window_seconds: float = Field(default=0.025, gt=0, le=0.2, description="STFT window")
    hop_seconds: float = Field(default=0.010, gt=0, le=0.1, description="STFT hop")
    n_fft: int | None = Field(default=None, ge=16, description="default: next power of two")
    n_mels: int = Field(default=64, ge=1, le=512)
    fmin: float = Field(default=125.0, ge=0)
    fmax: float = Field(default=7500.0, gt=0)
    log_offset: float = Field(default=0.001, gt=0)
    frames: int = Field(default=96, ge=1, description="frames per model input (patch)")


class AudioModelConfig(SessionConfig):
    """One audio classifier (an entry of ``models.audio``).

    ``yamnet``: the default model, every input/output parameter known. ``waveform``: the model
    takes ``[1, samples]`` float32 at ``sample_rate``. ``logmel``: the model takes a log-mel
    patch (``logmel`` front end), ``[1, 1, frames, mels]`` or ``[1, frames, mels]``.
    """

    type: Literal["yamnet", "waveform", "logmel"] = "yamnet"
    threads: int = Field(
        default=1, ge=0,
        description="intra-op threads; 1 suits a ~1 ms model (no thread pool spinning)",
    )
    labels: str = Field(
        default="audioset",
        description='"audioset" or a label file (CSV with a name/display_name column, or one '
        "label per line); relative paths are under models.dir",
    )
    sample_rate: int = Field(default=SAMPLE_RATE, ge=8000, le=48_000)
    window_seconds: float | None = Field(
        default=None, gt=0, le=30,
        description="waveform models: samples per window / sample_rate; default: the model's "
        "fixed input length",
    )
    logmel: LogMelConfig = Field(default_factory=LogMelConfig)
    input_quantization: Quantization | None = Field(
        default=None, description="for integer inputs; yamnet knows its own"
    )
    output_quantization: Quantization | None = Field(
        default=None, description="for integer outputs; yamnet knows its own"
    )
    activation: Literal["sigmoid", "softmax", "none"] | None = Field(
        default=None, description="applied to the outputs; default sigmoid for yamnet, else none"
    )


def default_audio_models() -> dict[str, AudioModelConfig]:
    """The ``models.audio`` default: YAMNet as ``edge-agent models fetch`` prepares it."""
    return {"yamnet": AudioModelConfig(path=Path("yamnet/model.onnx"))}


class VadConfig(BaseModel):
    """Silero VAD as a second opinion for speech labels."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    model: Path = Field(
        default=Path("silero_vad/silero_vad.onnx"),
        description="relative paths are under models.dir",
    )
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="speech probability needed")
    labels: list[str] = Field(
        default_factory=lambda: ["speech"], description="labels that need the VAD to agree"
    )



# -- motion gate --------------------------------------------------------------------------


class MotionConfig(BaseModel):
    """``cameras[].motion``: when the detector may be skipped."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="skip the detector on frames without motion")
    width: int = Field(default=160, ge=32, le=1280,
                       description="width of the grey image motion is computed on (pixels)")
    threshold: int = Field(default=25, ge=1, le=255,
                           description="grey-level change (0-255) that makes a pixel 'changed'")
    min_area: float = Field(default=0.002, ge=0.0, le=1.0,
                            description="fraction of the unmasked image that must change")
    alpha: float = Field(default=0.05, gt=0.0, le=1.0,
                         description="background learning rate per frame (higher: stopped "
                         "objects fade into the background sooner)")
    keepalive_s: float = Field(default=10.0, gt=0.0,
                               description="while only stationary objects are tracked and "
                               "nothing moves, run the detector this often (seconds)")
