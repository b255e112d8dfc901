"""The log redactor and the de-duplication of lines the agent did not write itself."""

from __future__ import annotations

import pytest

from agent.logs import LineDeduplicator, redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("cannot open rtsp://cam/1?token=abc123: connection refused",
         "cannot open rtsp://cam/1?token=***: connection refused"),
        ("http://cam/x?token=a:b&res=hd failed", "http://cam/x?token=***&res=hd failed"),
        ("auth=xyz.", "auth=***."),
        ("key=abc, then", "key=***, then"),
        ("password=p@ss.word end", "password=*** end"),
        ("(token=abc)", "(token=***)"),
        ("rtsp://admin:pw@camera.example/s", "rtsp://***@camera.example/s"),
    ],
)
def test_redact_hides_the_value_and_keeps_the_sentence(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_same_line_shown_once_per_window_with_the_count_held_back() -> None:
    now = [0.0]
    dedup = LineDeduplicator(window_s=60.0, clock=lambda: now[0])
    assert dedup.check("[rtsp @ 0x55d1] method DESCRIBE failed: 401 Unauthorized") == (True, 0)
    for _ in range(5):
        now[0] += 5.0
        assert dedup.check("[rtsp @ 0x77aa] method DESCRIBE failed: 401 Unauthorized")[0] is False
    # A different status code is a different failure.
    assert dedup.check("[rtsp @ 0x55d1] method DESCRIBE failed: 404 Not Found") == (True, 0)
    now[0] += 60.0
    assert dedup.check("[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized") == (True, 5)
