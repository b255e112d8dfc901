"""Sound-card capture in a helper process: PortAudio never runs inside the agent.

PortAudio is one global library state that lists devices once, when it starts, and some of
its back ends cannot be shut down after their device or server went away: with JACK, closing
a stream whose server died never returns and terminating PortAudio then aborts the process.
Inside the agent that meant a microphone that never came back without a restart, and a
SIGTERM that never ended the process. So each opened microphone is a child process
(``python -m agent.sources.capture``) that finds the device, opens it and streams its
samples, mono float32, over a pipe. A lost device is a child that exits; the agent kills and
replaces it at will, and every new child is a fresh PortAudio that sees the devices there
now (a re-plugged USB microphone, a restarted sound server).

The pipe carries frames: one type byte, a 4-byte little-endian length, the payload.
``I`` (JSON: the device opened), ``E`` (JSON: why it failed or stopped), ``D`` (a 4-byte
count of driver overruns so far, then float32 samples).

This module imports nothing heavy at the top and nothing of the agent beyond itself, so the
child starts quickly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import sys
import threading
from typing import IO, Any

HEADER = struct.Struct("<cI")
OVERRUNS = struct.Struct("<I")
PIPE_BYTES = 1 << 20


class CaptureError(Exception):
    """The device cannot be found or opened; the message names the microphone."""


def input_devices() -> list[dict[str, Any]]:
    """PortAudio's input devices, each with ``index``, ``name``, ``hostapi`` name and rate."""
    import sounddevice as sd

    hostapis = sd.query_hostapis()
    out = []
    for dev in sd.query_devices():
        if dev["max_input_channels"] > 0:
            out.append({
                "index": dev["index"],
                "name": dev["name"],
                "hostapi": hostapis[dev["hostapi"]]["name"],
                "channels": dev["max_input_channels"],
                "default_samplerate": dev["default_samplerate"],
            })
    return out


def resolve_input_device(mic_id: str, spec: str | int) -> dict[str, Any]:
    """The input device ``spec`` names: an index, ``"default"``, or (part of) a name.

    An exact name wins over a partial one; several partial matches are an error, since picking
    one silently could record the wrong room.
    """
    import sounddevice as sd

    devices = input_devices()
    have = ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if spec == "default":
        index = sd.default.device[0]
        if index is None or index < 0:
            index = sd.query_hostapis(0)["default_input_device"] if devices else -1
        if index is None or index < 0:
            if not devices:
                raise CaptureError(f"microphone {mic_id}: no input device found (have: {have})")
            index = devices[0]["index"]
        spec = int(index)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        index = int(spec)
        for d in devices:
            if d["index"] == index:
                return d
        raise CaptureError(
            f"microphone {mic_id}: no input device with index {index} (have: {have})")
    exact = [d for d in devices if d["name"].lower() == spec.lower()]
    if len(exact) == 1:
        return exact[0]
    partial = [d for d in devices if spec.lower() in d["name"].lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise CaptureError(
            f"microphone {mic_id}: no input device matches {spec!r} (have: {have})")
    raise CaptureError(
        f"microphone {mic_id}: {spec!r} matches several input devices "
        f"({', '.join(d['name'] for d in partial)}); use a longer name or the index"
    )


def write_frame(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def read_frame(pipe: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next frame from the child's pipe, or None at its end."""
    head = pipe.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    kind, size = HEADER.unpack(head)
    payload = pipe.read(size)
    if len(payload) < size:
        return None
    return kind, payload


def _capture(spec: dict[str, Any], out: IO[bytes]) -> int:
    """The child's work: open the device, then stream until it stops or the agent goes."""
    import numpy as np
    import sounddevice as sd

    mic_id = spec["id"]
    channels = int(spec["channels"])

    def fail(message: str) -> int:
        write_frame(out, b"E", json.dumps({"message": message}).encode())
        return 2

    try:
        device = resolve_input_device(mic_id, spec["device"])
    except CaptureError as exc:
        return fail(str(exc))
    if channels > device["channels"]:
        return fail(f"microphone {mic_id}: device {device['name']!r} has {device['channels']} "
                    f"input channel(s); {channels} configured")
    rate = int(spec["sample_rate"] or round(device["default_samplerate"]))
    try:
        sd.check_input_settings(device=device["index"], channels=channels, samplerate=rate,
                                dtype="float32")
    except Exception as exc:  # PortAudioError or ValueError, both say why
        return fail(f"microphone {mic_id}: device {device['name']!r} does not support {rate} Hz "
                    f"with {channels} channel(s): {exc}")
    fd = out.fileno()
    with contextlib.suppress(OSError, AttributeError):  # Linux: ~5 s of 48 kHz, not 0.3 s
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    write_lock = threading.Lock()
    ready = threading.Event()
    overruns = [0]
    broken = threading.Event()

    def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: downmix and write straight to the pipe (one syscall, no thread
        # hand-over: the agent's reader drains the pipe as blocks come, so it never fills).
        if status.input_overflow:
            overruns[0] += 1
        if not ready.is_set():
            return  # before the agent heard that the device is open
        mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1)
        data = np.ascontiguousarray(mono, dtype=np.float32).tobytes()
        frame = (HEADER.pack(b"D", OVERRUNS.size + len(data))
                 + OVERRUNS.pack(overruns[0] & 0xFFFFFFFF) + data)
        try:
            with write_lock:
                _write_all(fd, frame)
        except OSError:
            broken.set()  # the agent closed the pipe
            raise sd.CallbackAbort from None

    block_seconds = spec.get("block_seconds")
    try:
        stream = sd.InputStream(
            device=device["index"], channels=channels, samplerate=rate,
            blocksize=int(block_seconds * rate) if block_seconds else 0, dtype="float32",
            callback=callback,
        )
        stream.start()
    except Exception as exc:
        return fail(f"microphone {mic_id}: cannot open {device['name']!r} at {rate} Hz: {exc}")
    with write_lock:
        write_frame(out, b"I", json.dumps({"name": device["name"], "hostapi": device["hostapi"],
                                           "rate": rate}).encode())
    ready.set()
    parent = os.getppid()
    while not broken.wait(0.5):
        if os.getppid() != parent:
            return 0  # the agent is gone (killed): so is its microphone
        if not stream.active:
            with write_lock:
                return fail(f"microphone {mic_id}: the input stream stopped (device "
                            f"{device['name']!r} unplugged or its sound server gone?)")
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main() -> None:
    """Entry point of the child: ``python -m agent.sources.capture JSON``."""
    # systemd's stop (and a terminal's Ctrl-C) signals the whole group: the agent, not the
    # child, decides when a microphone ends, so its stop is not mistaken for a lost device.
    # The child still ends with the agent: killed by it, or on its own when it is gone.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    code = 1
    try:
        code = _capture(json.loads(sys.argv[1]), out)
    except (BrokenPipeError, OSError):
        code = 0  # the agent closed the pipe: it wants this microphone no more
    except Exception as exc:
        with contextlib.suppress(OSError):
            write_frame(out, b"E", json.dumps({"message": f"capture failed: {exc!r}"}).encode())
    # Never run PortAudio's exit hook: with a vanished device or server it hangs or aborts.
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
