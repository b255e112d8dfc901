"""What every camera reader is: one open connection that grabs cheaply and decodes on demand.

``agent.sources.camera`` holds the readers for devices, streams, files and folders and the
capture thread that drives any reader; ``agent.sources.command`` a reader fed by a child
process. Both build on the two names here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt


class CameraError(Exception):
    """A camera cannot be opened or read; ``permanent`` when retrying will not help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class FrameReader(ABC):
    """One open connection to a camera. ``grab`` is cheap; ``retrieve`` decodes."""

    native_fps: float | None = None

    @abstractmethod
    def grab(self) -> bool:
        """Advance to the next frame; False at the end of a file or when the stream failed."""

    @abstractmethod
    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        """Decode the grabbed frame (BGR), or None when it cannot be decoded."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the connection (from the reader's own thread)."""

    def interrupt(self) -> None:  # noqa: B027 - optional hook: most readers never block long
        """Unblock a ``grab`` waiting on the network (from another thread)."""

    def failure(self) -> str:
        """Why the last ``grab`` failed, for the status detail."""
        return "no more frames"

    def damage(self) -> tuple[int, str] | None:
        """Files at their end: (frames lost, why) when the input was damaged, else None."""
        return None
