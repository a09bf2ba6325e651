"""Fixtures every test folder may use."""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """The text of every log event emitted during the test."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
