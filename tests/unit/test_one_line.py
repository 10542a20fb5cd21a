"""`one_line`: how an error's text goes into a table row, a log line or a recorded reason."""

from __future__ import annotations

from clonefleet.errors import StateError, one_line


def test_whitespace_and_newlines_become_one_space() -> None:
    error = StateError("etcd refused\n  a write:\tquota\r\nexceeded  ")
    assert one_line(error) == "etcd refused a write: quota exceeded"


def test_a_limit_cuts_after_joining() -> None:
    assert one_line("a\n\n\nb c d", 5) == "a b c"
    assert one_line("short", 300) == "short"


def test_empty_text_stays_empty_for_callers_to_name_the_type() -> None:
    assert one_line(RuntimeError()) == ""
    assert (one_line(RuntimeError()) or "RuntimeError") == "RuntimeError"
