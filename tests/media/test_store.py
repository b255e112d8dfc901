"""The media store on its own: exact bytes back, bounded in size and age, counted."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from agent.media.store import MediaMissing, MediaStore
from tests.media.helpers import jpeg, snapshot_event


def disk_bytes(directory: Path) -> int:
    """What the store's files take (apparent size), however the store counts itself."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_every_role_comes_back_with_its_metadata_and_exact_bytes(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", 8 * 1024 * 1024, 3600)
    blobs = {"input": jpeg(64, 48, 1), "annotated": jpeg(64, 48, 2)}
    event = snapshot_event(blobs)
    assert store.put_event(event) == 2
    got = store.get(event.id)
    assert [m.role for m in got] == ["input", "annotated"]
    for item, media in zip(got, event.images, strict=True):
        assert item.data == blobs[item.role]
        assert item.info["sha256"] == media.sha256 == hashlib.sha256(item.data).hexdigest()
        assert (item.info["width"], item.info["height"], item.info["bytes"]) == (
            64, 48, len(item.data))
    (one,) = store.get(event.id, "annotated")
    assert one.data == blobs["annotated"]
    with pytest.raises(MediaMissing, match="has no media with role crop"):
        store.get(event.id, "crop")
    with pytest.raises(MediaMissing, match="no media for event nope"):
        store.get("nope")
    store.close()
    # Another process (or a restart) reads the same store.
    again = MediaStore(tmp_path / "media", 8 * 1024 * 1024, 3600)
    assert again.get(event.id, "input")[0].data == blobs["input"]
    again.close()


def test_a_burst_of_large_images_stays_within_max_bytes_oldest_evicted(tmp_path: Path) -> None:
    limit = 2 * 1024 * 1024
    store = MediaStore(tmp_path / "media", limit, 3600)
    events = []
    peak = 0
    for i in range(60):  # ~60 x 2 x 90 KB: about five times the bound
        event = snapshot_event({"input": jpeg(160, 120, 2 * i, 100),
                                "annotated": jpeg(160, 120, 2 * i + 1, 100)})
        store.put_event(event)
        events.append(event)
        peak = max(peak, disk_bytes(tmp_path / "media"))
    assert peak <= limit, peak
    stats = store.stats()
    assert stats["bytes"] <= limit
    assert stats["evicted"] > 0 and stats["stored"] == 120
    # Oldest first: the newest event is whole, the first one is gone with a clear error.
    assert len(store.get(events[-1].id)) == 2
    with pytest.raises(MediaMissing, match="max_bytes"):
        store.get(events[0].id)
    store.close()


def test_media_older_than_retention_expire_and_are_counted(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", 8 * 1024 * 1024, 0.3)
    event = snapshot_event({"input": jpeg(64, 48, 1)})
    store.put_event(event)
    assert store.get(event.id)
    time.sleep(0.5)
    with pytest.raises(MediaMissing, match=r"media\.retention"):
        store.get(event.id)
    assert store.expire() == 1
    assert store.stats()["expired"] == 1 and store.stats()["events"] == 0
    store.close()


def test_invalid_bytes_are_counted_not_raised(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media", 8 * 1024 * 1024, 3600)
    event = snapshot_event({"input": jpeg(64, 48, 1)})
    broken = event.model_copy(update={"images": [event.images[0].model_copy(
        update={"data": "not base64!"})]})
    assert store.put_event(broken) == 0
    assert store.stats()["errors"] == 1
    store.close()


def test_the_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0)
    try:
        store = MediaStore(tmp_path / "state" / "media", 8 * 1024 * 1024, 3600)
        store.put_event(snapshot_event({"input": jpeg(64, 48, 1)}))
        store.close()
    finally:
        os.umask(old)
    directory = tmp_path / "state" / "media"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "cache.db").stat().st_mode) == 0o600
