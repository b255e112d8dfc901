"""Configuration of the events stage: use cases (``use_cases:``), and what turns a camera's
detections or a microphone's scores into events (``cameras[].objects``, ``zones``, ``masks``,
``tracking``, ``snapshots``, ``classify``; ``microphones[].clip``, ``updates``).

Only pydantic here: loading a configuration must not load numpy or OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


MetadataType = Literal["string", "integer", "number", "boolean"]


class MetadataField(BaseModel):
    """One custom metadata key a use case's events carry."""

    model_config = ConfigDict(extra="forbid")

    type: MetadataType = "string"
    required: bool = True
    description: str | None = None


class UseCaseConfig(BaseModel):
    """A group of events that share a purpose and a metadata structure."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    event_type: str = Field(
        default="custom",
        description="eventType for the hosted vision-events API (quality_check, safety_alert...)",
    )
    metadata: dict[str, MetadataField] = Field(default_factory=dict)
    strict: bool = Field(default=True, description="reject metadata keys not declared here")


# -- camera objects ---------------------------------------------------------------------------


def _check_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"point [{x}, {y}] is outside 0..1 (coordinates are fractions of the frame's "
                "width and height)"
            )
    return points


Polygon = Annotated[list[tuple[float, float]], AfterValidator(_check_polygon)]
"""``[[x, y], ...]``, at least three corners, normalised to 0..1 of width and height."""


class LabelFilter(BaseModel):
    """``objects.filters.<label>``: what a detection of this label needs.

    Areas below or equal to 1 are fractions of the frame's area; above 1, pixels.
    """

    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="score to be tracked")
    threshold: float = Field(default=0.7, ge=0.0, le=1.0,
                             description="median of recent scores needed to report the object")
    min_area: float = Field(default=0.0, ge=0.0, description="box area, fraction or pixels")
    max_area: float | None = Field(default=None, gt=0.0, description="box area, fraction or pixels")
    min_ratio: float = Field(default=0.0, ge=0.0, description="box width / height")
    max_ratio: float | None = Field(default=None, gt=0.0, description="box width / height")

    @model_validator(mode="after")
    def _ordered(self) -> LabelFilter:
        same_unit = self.max_area is not None and (self.max_area <= 1.0) == (self.min_area <= 1.0)
        if same_unit and self.max_area is not None and self.max_area < self.min_area:
            raise ValueError("max_area is below min_area")
        if self.max_ratio is not None and self.max_ratio < self.min_ratio:
            raise ValueError("max_ratio is below min_ratio")
        return self


class ObjectsConfig(BaseModel):
    """``cameras[].objects``: which labels to track and the per-label filters."""

    model_config = ConfigDict(extra="forbid")

    track: list[str] = Field(default_factory=lambda: ["person"],
                             description="label ids to track; others are ignored")
    filters: dict[str, LabelFilter] = Field(default_factory=dict,
                                            description="per label id; defaults otherwise")


class ZoneConfig(BaseModel):
    """``cameras[].zones.<name>``: a polygon; objects whose bottom-centre is inside are in it."""

    model_config = ConfigDict(extra="forbid")

    coordinates: Polygon
    objects: list[str] | None = Field(default=None,
                                      description="labels this zone applies to (default all)")
    inertia: int = Field(default=3, ge=1,
                         description="consecutive frames inside before an object is in the zone")
    anchor: str = Field(default="box", min_length=1,
                        description="box (bottom-centre), outline (segmentation: any point of "
                        "it) or a keypoint name (pose); see agent.events.shapes")


class SnapshotsConfig(BaseModel):
    """``cameras[].snapshots``: the JPEG images events carry."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    input: bool = Field(default=True, description="the frame as captured")
    annotated: bool = Field(default=True, description="the frame with boxes, zones drawn")
    quality: int = Field(default=80, ge=1, le=100, description="JPEG quality")
    max_width: int | None = Field(default=1280, ge=32, description="shrink wider frames")
    better_by: float = Field(default=0.05, ge=0.0, le=1.0,
                             description="score gain over the last sent snapshot that is worth "
                             "an update with new images")
    on_end: bool = Field(default=False,
                         description="attach the best snapshot (already sent) to end events")


class TrackingConfig(BaseModel):
    """``cameras[].tracking``: how detections become tracked objects, and how often they talk."""

    model_config = ConfigDict(extra="forbid")

    max_disappeared: int = Field(
        default=25, ge=1,
        description="detector runs without seeing an object before it ends (frames; 25 is "
        "5 s at 5 fps)",
    )
    iou_threshold: float = Field(default=0.3, gt=0.0, le=1.0,
                                 description="overlap a detection needs to continue a track")
    update_interval_s: float = Field(default=2.0, ge=0.0,
                                     description="at most one update event per object this often")
    min_hits: int = Field(default=3, ge=1,
                          description="frames an object must be seen before it can be confirmed")
    low_score: float = Field(
        default=0.1, ge=0.0, le=1.0,
        description="detections from this score up (below min_score) keep a track alive",
    )
    contained_threshold: float | None = Field(
        default=0.7, gt=0.0, le=1.0,
        description="a confident detection whose box lies this much (intersection over the "
        "smaller box) inside a same-label track's box joins that track instead of starting "
        "a new one (null: never)",
    )
    stationary_iou: float = Field(
        default=0.85, gt=0.0, le=1.0,
        description="overlap with where it stood that still counts as not moving",
    )
    stationary_frames: int = Field(default=10, ge=1,
                                   description="frames without moving before an object is "
                                   "stationary")


# -- classification ---------------------------------------------------------------------------


class ClassifyConfig(BaseModel):
    """``cameras[].classify``: a classifier on the camera's frames, objects or on request."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None,
                              description="a classifier in models.detectors; default: the "
                              "camera's model, when that is a classifier")
    run: Literal["frames", "objects", "request"] = Field(
        default="frames", description="every frame, each tracked object, or on request")
    crop: tuple[float, float, float, float] | None = Field(
        default=None, description="frames/request: [x1, y1, x2, y2] as fractions of the frame")
    objects: list[str] = Field(default_factory=list,
                               description="objects: label ids of the detector to classify "
                               "(empty: every tracked label)")
    padding: float = Field(default=0.0, ge=0.0, le=1.0,
                           description="objects: box grown by this fraction on each side")
    hold_frames: int = Field(default=3, ge=1,
                             description="results a new top class must hold to be reported")
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0,
                                  description="probability a result needs to count")
    top_k: int | None = Field(default=None, ge=1, le=100,
                              description="classes per event; default the model's classify.top_k")

    @model_validator(mode="after")
    def _crop_ordered(self) -> ClassifyConfig:
        if self.crop is not None:
            x1, y1, x2, y2 = self.crop
            if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                raise ValueError("crop must be [x1, y1, x2, y2] with 0 <= x1 < x2 <= 1 and "
                                 "0 <= y1 < y2 <= 1 (fractions of the frame)")
        return self

    def crop_pixels(self, width: int, height: int) -> npt.NDArray[np.float32] | None:
        """``crop`` in pixels of a frame of this size (None: the whole frame)."""
        if self.crop is None:
            return None
        import numpy as np  # here, not at the top: loading a config must not load numpy

        return np.array(self.crop, dtype=np.float32) * np.array(
            [width, height, width, height], dtype=np.float32)


# -- sounds -----------------------------------------------------------------------------------


class ClipConfig(BaseModel):
    """The WAV clip attached to sound events."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    pre_roll_s: float = Field(
        default=1.0, ge=0.0, le=10.0, description="audio kept before the sound"
    )
    max_seconds: float = Field(default=10.0, gt=0.0, le=120.0, description="longest clip")
    on_new: bool = Field(default=False, description="also attach what is there so far to `new`")


class UpdateConfig(BaseModel):
    """When an ongoing sound is published again as ``update`` (rate-limited)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_interval_s: float = Field(
        default=5.0, ge=0.0, description="at most one update per interval"
    )
    min_confidence_rise: float = Field(default=0.1, ge=0.0, le=1.0)
    min_level_rise_db: float = Field(default=6.0, ge=0.0)
