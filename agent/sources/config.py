"""Configuration of sources (``cameras:``, ``microphones:``, ``synthetic:``).

Fields every source shares live in ``SourceCommon``; each kind adds its own. A camera's and a
microphone's settings for later stages (objects, zones, tracking, motion, clips) are those
stages' own classes, from ``agent.events.config`` and ``agent.inference.config``.

Only pydantic here: loading a configuration must not load numpy, OpenCV or sounddevice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.events.config import (
    ClassifyConfig,
    ClipConfig,
    ObjectsConfig,
    Polygon,
    SnapshotsConfig,
    TrackingConfig,
    UpdateConfig,
    ZoneConfig,
)
from agent.events.schema import MetadataValue
from agent.ids import TopicId
from agent.inference.config import MotionConfig, VadConfig
from agent.logs import redact
from agent.sources.urls import redact_url


class SourceCommon(BaseModel):
    """Identity and event context of a source."""

    model_config = ConfigDict(extra="forbid")

    id: TopicId = Field(description="unique among all sources; used in topics")
    name: str | None = Field(default=None, description="display name; defaults to id")
    location: str | None = None
    enabled: bool = True
    use_case: str = Field(default="default", description="a key of use_cases:")
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="custom metadata added to every event"
    )

    @property
    def display_name(self) -> str:
        return self.name or self.id


class SyntheticConfig(SourceCommon):
    """A source that emits events at a fixed rate, with ``seq`` in the metadata.

    It lets the backbone (outbox, MQTT, rules) be run, tested and benchmarked end to end
    without cameras.
    """

    rate: float = Field(default=1.0, gt=0, le=100_000, description="events per second")
    labels: list[str] = Field(
        default_factory=lambda: ["person"], description="label ids cycled through"
    )
    kind: str = Field(default="synthetic", pattern="^(synthetic|camera|microphone)$",
                      description="source kind the events claim (to exercise rules)")
    payload_bytes: int = Field(default=0, ge=0, description="padding added to metadata")
    count: int | None = Field(default=None, ge=1, description="stop after this many events")
    burst: int | None = Field(
        default=None, ge=1,
        description="events per burst, at `rate`, then `burst_pause` seconds of quiet",
    )
    burst_pause: float = Field(default=0.0, ge=0, le=86_400,
                               description="seconds of quiet after each burst")


# -- cameras ----------------------------------------------------------------------------------


CameraType = Literal["device", "rtsp", "mjpeg", "stream", "file", "folder", "command"]
"""How a camera is read: ``device`` (V4L2), ``rtsp``, ``mjpeg`` (HTTP(S) multipart JPEG or a
JPEG snapshot URL), ``stream`` (any other URL FFmpeg opens: rtmp, srt, HLS...), ``file``
(a video file), ``folder`` (a folder of images, in name order), ``command`` (frames from a
command's stdout: ``agent.sources.command``)."""


class ResizeConfig(BaseModel):
    """``cameras[].resize``: scale frames as they are captured; one side keeps the aspect."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(default=None, ge=16, le=8192)
    height: int | None = Field(default=None, ge=16, le=8192)

    @model_validator(mode="after")
    def _one_side(self) -> ResizeConfig:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a frame of ``width`` x ``height`` after resizing."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        if self.width is not None:
            return self.width, max(1, round(height * self.width / width))
        assert self.height is not None
        return max(1, round(width * self.height / height)), self.height


def infer_type(url: str) -> CameraType:
    """The camera type a URL or path implies."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "mjpeg"
    if scheme == "file":
        return "folder" if Path(urlsplit(url).path).is_dir() else "file"
    if scheme:
        return "stream"
    if re.match(r"^/dev/video\d+$", url):
        return "device"
    if url.endswith("/") or Path(url).is_dir():
        return "folder"
    return "file"


class CameraConfig(SourceCommon):
    """``cameras[]``: one camera, from capture to the events it emits.

    Give ``url`` (an ``rtsp://``, ``http(s)://`` URL, a video file, a folder of images,
    ``/dev/videoN``) or ``device`` (a V4L2 index), not both. ``type`` is inferred from it
    unless given. Each later stage's part is that stage's configuration: ``motion`` in
    ``agent.inference.config``; ``objects``, ``zones``, ``masks``, ``snapshots``,
    ``tracking``, ``classify`` in ``agent.events.config``.
    """

    url: str | None = Field(default=None, repr=False,
                            description="stream URL, file or folder path, or /dev/videoN")
    device: int | None = Field(default=None, ge=0, description="V4L2 device index")
    command: CommandConfig | None = Field(
        default=None, description="frames from a command's stdout (a Pi or Jetson CSI camera)"
    )
    type: CameraType | None = Field(default=None, description="default: from url or device")
    loop: bool = Field(default=False, description="files and folders: start again at the end")
    realtime: bool = Field(default=True,
                           description="files and folders: pace at the file's frame rate "
                           "(false: as fast as frames are consumed)")
    fps: float | None = Field(default=5.0, gt=0, le=240,
                              description="frames per second processed at most (null: all)")
    resize: ResizeConfig | None = None
    model: str = Field(default="yolov3-tiny-coco", description="a key of models.detectors")
    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)
    zones: dict[str, ZoneConfig] = Field(default_factory=dict)
    masks: list[Polygon] = Field(default_factory=list,
                                 description="regions to ignore (normalised polygons)")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig)
    classify: ClassifyConfig | None = Field(
        default=None, description="a classifier on frames, objects or on request "
        "(agent.events.classification)")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    timeout_s: float = Field(default=10.0, gt=0, le=300,
                             description="network streams: open and read timeout; command "
                             "cameras: longest wait for a frame")
    verify_tls: bool = Field(default=True,
                             description="https cameras: check the certificate (turn off only "
                             "for a camera with a self-signed certificate on a trusted network)")

    @model_validator(mode="after")
    def _source(self) -> CameraConfig:
        if self.command is not None or self.type == "command":
            if self.command is None or self.url is not None or self.device is not None:
                raise ValueError("type command: give command (a preset or argv), not url or "
                                 "device")
            self.type = "command"
            return self._common_checks()
        if (self.url is None) == (self.device is None):
            raise ValueError("give exactly one of url, device and command")
        if self.url is not None and not self.url.strip():
            raise ValueError("url: must not be empty")
        implied: CameraType = "device" if self.device is not None else infer_type(self.url or "")
        if self.type is None:
            self.type = implied
        elif self.device is not None and self.type != "device":
            raise ValueError(f"type: {self.type} needs a url, not a device index")
        elif self.url is not None and self.type != implied:
            network = ("rtsp", "mjpeg", "stream")
            if (self.type in network) != (implied in network) or (
                self.type == "device" and implied != "device"
            ):
                raise ValueError(
                    f"type: {self.type} does not fit url {redact_url(self.url)} "
                    f"(it looks like {implied})"
                )
        return self._common_checks()

    def _common_checks(self) -> CameraConfig:
        if self.loop and self.type not in ("file", "folder"):
            raise ValueError(f"loop: only files and folders can loop, not a {self.type} camera")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        for name in self.zones:
            if not name.strip():
                raise ValueError("zones: a zone needs a name")
        return self

    @property
    def camera_type(self) -> CameraType:
        """The resolved type (the validator always fills it)."""
        assert self.type is not None
        return self.type

    @property
    def finite(self) -> bool:
        """Files and folders end; cameras and streams do not."""
        return self.camera_type in ("file", "folder")

    @property
    def display_url(self) -> str:
        """Where the frames come from, safe to show."""
        if self.device is not None:
            return f"/dev/video{self.device}"
        if self.command is not None:
            return self.command.display
        return redact_url(self.url or "")


# -- command cameras --------------------------------------------------------------------------


PixelFormat = Literal["bgr24", "yuv420p", "nv12", "mjpeg"]
"""What the command writes: raw frames of ``width`` x ``height``, or JPEG after JPEG."""

Preset = Literal["rpicam", "nvargus", "gstreamer"]

_PRESET_FORMATS: dict[str, PixelFormat] = {
    "rpicam": "yuv420p",
    "nvargus": "yuv420p",
    "gstreamer": "yuv420p",
}


class CommandConfig(BaseModel):
    """``cameras[].command``: the command a ``command`` camera reads frames from.

    Give ``preset`` (with ``width``, ``height``, ``framerate`` and ``camera`` or ``url``) or
    ``argv`` (the exact command, no shell; ``format`` and, for raw formats, ``width`` and
    ``height`` say what it writes). ``argv`` wins over nothing: give exactly one.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = Field(default=None,
                                  description="rpicam, nvargus or gstreamer (see docs/vision.md)")
    argv: list[str] | None = Field(default=None, repr=False,
                                   description="the command and its arguments, run without a shell")
    format: PixelFormat | None = Field(
        default=None, description="bgr24, yuv420p, nv12 or mjpeg; presets default to yuv420p"
    )
    width: int | None = Field(default=None, ge=16, le=8192)
    height: int | None = Field(default=None, ge=16, le=8192)
    framerate: float = Field(default=15.0, gt=0, le=240, description="presets: frames per second")
    camera: int = Field(default=0, ge=0, description="rpicam: --camera; nvargus: sensor-id")
    url: str | None = Field(default=None, repr=False, description="gstreamer: the rtsp:// URL")
    codec: Literal["h264", "h265"] = Field(default="h264", description="gstreamer: the stream's")
    latency_ms: int = Field(default=200, ge=0, le=10_000, description="gstreamer: jitter buffer")

    @model_validator(mode="after")
    def _check(self) -> CommandConfig:
        if (self.preset is None) == (self.argv is None):
            raise ValueError("give exactly one of preset and argv")
        if self.argv is not None and (not self.argv or not self.argv[0].strip()):
            raise ValueError("argv: must name a command")
        if self.argv is not None and self.format is None:
            raise ValueError("format: say what the command writes (bgr24, yuv420p, nv12, mjpeg)")
        if self.preset is not None and (self.width is None or self.height is None):
            raise ValueError(f"preset {self.preset}: give width and height")
        if self.pixel_format != "mjpeg":
            if self.width is None or self.height is None:
                raise ValueError(f"format {self.pixel_format}: give width and height")
            if self.pixel_format in ("yuv420p", "nv12") and (self.width % 2 or self.height % 2):
                raise ValueError(f"format {self.pixel_format}: width and height must be even")
        if self.preset == "gstreamer" and not (self.url and "://" in self.url):
            raise ValueError("preset gstreamer: give url (rtsp://...)")
        if self.preset == "nvargus" and self.pixel_format == "mjpeg":
            raise ValueError("preset nvargus: format mjpeg is not offered; use yuv420p")
        if self.preset == "gstreamer" and self.pixel_format == "mjpeg":
            raise ValueError("preset gstreamer: format mjpeg is not offered; use yuv420p")
        return self

    @property
    def pixel_format(self) -> PixelFormat:
        """The resolved format: configured, else the preset's."""
        if self.format is not None:
            return self.format
        return _PRESET_FORMATS[self.preset or "rpicam"]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one raw frame (0 for MJPEG, whose frames vary)."""
        w, h = self.width or 0, self.height or 0
        return {"bgr24": w * h * 3, "yuv420p": w * h * 3 // 2, "nv12": w * h * 3 // 2,
                "mjpeg": 0}[self.pixel_format]

    def command(self) -> list[str]:
        """The exact argv run: ``argv`` as given, or the preset's expansion."""
        if self.argv is not None:
            return list(self.argv)
        w, h, fps = self.width, self.height, self.framerate
        rate = f"{fps:g}"
        if self.preset == "rpicam":
            codec = "mjpeg" if self.pixel_format == "mjpeg" else "yuv420"
            return ["rpicam-vid", "-t", "0", "-n", "--camera", str(self.camera),
                    "--width", str(w), "--height", str(h), "--framerate", rate,
                    "--codec", codec, "-o", "-"]
        raw = "video/x-raw,format=" + ("NV12" if self.pixel_format == "nv12" else
                                       "BGR" if self.pixel_format == "bgr24" else "I420")
        fraction = _fraction(fps)
        if self.preset == "nvargus":
            convert = ["nvvidconv", "!"]
            if self.pixel_format == "bgr24":
                # nvvidconv has no packed 24-bit output: BGRx, then videoconvert on the CPU.
                convert += ["video/x-raw,format=BGRx", "!", "videoconvert", "!"]
            return ["gst-launch-1.0", "-q", "nvarguscamerasrc", f"sensor-id={self.camera}", "!",
                    f"video/x-raw(memory:NVMM),width={w},height={h},framerate={fraction}", "!",
                    *convert, raw, "!", "fdsink", "fd=1"]
        assert self.preset == "gstreamer" and self.url is not None
        depay, parse = (("rtph265depay", "h265parse") if self.codec == "h265"
                        else ("rtph264depay", "h264parse"))
        convert = ["nvvidconv", "!"]
        if self.pixel_format == "bgr24":
            convert += [f"video/x-raw,format=BGRx,width={w},height={h}", "!", "videoconvert", "!"]
            size = ""
        else:
            size = f",width={w},height={h}"
        return ["gst-launch-1.0", "-q", "rtspsrc", f"location={self.url}",
                f"latency={self.latency_ms}", "protocols=tcp", "!", depay, "!", parse, "!",
                "nvv4l2decoder", "!", *convert, raw + size, "!", "fdsink", "fd=1"]

    @property
    def display(self) -> str:
        """What runs, safe to show: the program and the preset, never credentials."""
        program = os.path.basename(self.command()[0])
        return f"command {program}" + (f" ({self.preset})" if self.preset else "")

    def display_argv(self) -> str:
        """The whole command line with credentials hidden (for the log at start)."""
        return redact(" ".join(self.command()))


def _fraction(fps: float) -> str:
    """GStreamer's framerate fraction: 15 -> ``15/1``, 7.5 -> ``15/2``, 29.97 -> ``2997/100``."""
    for den in (1, 2, 4, 100, 1000):
        num = fps * den
        if abs(num - round(num)) < 1e-6:
            return f"{round(num)}/{den}"
    return f"{round(fps * 1000)}/1000"


# -- microphones ------------------------------------------------------------------------------


DEFAULT_LISTEN = [
    "speech",
    "siren",
    "glass",
    "shatter",
    "alarm",
    "screaming",
    "dog",
    "smoke_detector_smoke_alarm",
]
"""Labels listened to when a microphone names none (AudioSet catalogue ids)."""


class LabelNameOverride(BaseModel):
    """Display names replacing the catalogue's for one label; either language may be left out."""

    model_config = ConfigDict(extra="forbid")

    en: str | None = None
    ko: str | None = None


class LabelSettings(BaseModel):
    """Per-label settings of a microphone (the reference's per-label thresholds)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="confidence needed; default: the microphone's"
    )
    min_volume: float | None = Field(
        default=None, ge=-120.0, le=0.0,
        description="dBFS the window needs for this label to count; default: the microphone's",
    )
    name: LabelNameOverride | None = None


class MicrophoneConfig(SourceCommon):
    """One microphone: a capture device or a WAV file, and what to listen for."""

    device: str | int | None = Field(
        default=None, description='input device: name (or part of it), index, or "default"'
    )
    file: Path | None = Field(default=None, description="a WAV file instead of a device")
    loop: bool = Field(default=False, description="replay the file from the start at its end")
    realtime: bool = Field(
        default=True, description="pace the file in real time; false reads it as fast as possible"
    )
    sample_rate: int | None = Field(
        default=None, ge=8000, le=192_000, description="capture rate; default: the device's"
    )
    channels: int = Field(default=1, ge=1, le=32, description="captured, then averaged to mono")
    block_seconds: float | None = Field(
        # 50 ms: each callback is a Python call; at the drivers' usual 10-20 ms periods they
        # alone cost ~1% of a Pi core in a quiet room. A sound is seen at most 50 ms later.
        default=0.05, gt=0.0, le=0.5,
        description="capture callback period (null: the driver's, often 10-20 ms). Longer "
        "blocks cost less CPU (fewer callbacks) and add up to that much event latency",
    )
    model: str = Field(default="yamnet", description="a key of models.audio")
    hop_seconds: float = Field(default=0.48, ge=0.05, le=10.0, description="classify this often")
    min_volume: float = Field(
        default=-70.0, ge=-120.0, le=0.0, description="dBFS below which the classifier never runs"
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="confidence needed, unless a label sets its own"
    )
    listen: list[str] = Field(default_factory=lambda: list(DEFAULT_LISTEN))
    labels: dict[str, LabelSettings] = Field(default_factory=dict)
    max_not_heard: float = Field(
        default=2.0, gt=0.0, le=600.0, description="seconds without the label before `end`"
    )
    top_k: int = Field(default=5, ge=1, le=50, description="classifications carried per event")
    updates: UpdateConfig = Field(default_factory=UpdateConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    reconnect_min_s: float = Field(default=1.0, gt=0.0, le=600.0)
    reconnect_max_s: float = Field(default=30.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _check(self) -> MicrophoneConfig:
        if (self.device is None) == (self.file is None):
            raise ValueError(
                f"microphone {self.id}: set exactly one of `device` (name, index or \"default\") "
                "or `file` (a WAV path)"
            )
        if self.file is not None and self.sample_rate is not None:
            raise ValueError(
                f"microphone {self.id}: `sample_rate` applies to devices; a file has its own"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"microphone {self.id}: `reconnect_max_s` must be at least `reconnect_min_s`"
            )
        return self

    def label_threshold(self, label_id: str) -> float:
        """Confidence the label needs on this microphone."""
        s = self.labels.get(label_id)
        return s.threshold if s is not None and s.threshold is not None else self.threshold

    def label_min_volume(self, label_id: str) -> float:
        """dBFS a window needs for the label to count on this microphone."""
        s = self.labels.get(label_id)
        return s.min_volume if s is not None and s.min_volume is not None else self.min_volume


def validate_listen(config: MicrophoneConfig, known_ids: Iterable[str]) -> list[str]:
    """Problems with label ids the microphone names, one line each (empty when all are known).

    The ids are the label catalogue's; the root validator calls this for every microphone.
    """
    known = set(known_ids)
    problems = []
    for key, ids in (
        ("listen", config.listen),
        ("labels", list(config.labels)),
        ("vad.labels", config.vad.labels if config.vad.enabled else []),
    ):
        for label_id in ids:
            if label_id not in known:
                problems.append(
                    f"microphones.{config.id}.{key}: unknown label {label_id!r} "
                    f"(microphone {config.id}; ids are the label catalogue's, e.g. speech, siren)"
                )
    return problems
