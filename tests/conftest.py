from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GROKIMAGINE_API_KEY",
        "GROKIMAGINE_BASE_URL",
        "GROKIMAGINE_TIER",
        "GROKIMAGINE_POLL_INTERVAL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Every record the library logs, at DEBUG and up."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.DEBUG)
    for name in ("grokimagine_async", "httpx", "httpcore"):
        logging.getLogger(name).addHandler(handler)
    old = logging.getLogger("grokimagine_async").level
    logging.getLogger("grokimagine_async").setLevel(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.DEBUG)
    yield records
    logging.getLogger("grokimagine_async").setLevel(old)
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    for name in ("grokimagine_async", "httpx", "httpcore"):
        logging.getLogger(name).removeHandler(handler)
