from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import pytest

from .redis_server import RedisServer

#: The anyio backends an async test may run on. The client's own modules mark themselves
#: for both (``pytestmark``); modules asyncio by nature (uvicorn served in the running
#: loop, the aiohttp and FastAPI examples) carry no mark and stay on asyncio.
BACKENDS = ("asyncio", "trio")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names, reason=None): the anyio backends (asyncio, trio) an async test "
        "runs on, once each; without the mark, asyncio alone. On a module, a test or a "
        "pytest.param: a test runs on the backends every one of its marks names, so a test "
        "or a case narrows its module's mark (say why with reason=).",
    )


def _backends(marks: Iterable[pytest.Mark], where: str) -> set[str]:
    """The backends every ``backends`` mark in ``marks`` allows."""
    allowed = set(BACKENDS)
    for mark in marks:
        if mark.name != "backends":
            continue
        if not mark.args or set(mark.args) - set(BACKENDS):
            raise pytest.UsageError(
                f"{where}: backends{mark.args} names no backend or an unknown one; "
                f"choose from {', '.join(BACKENDS)}"
            )
        allowed &= set(mark.args)
    return allowed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each async test once on each backend its module's and its own marks allow."""
    if "anyio_backend" not in metafunc.fixturenames:
        return
    definition = metafunc.definition
    if definition.get_closest_marker("backends") is None:
        return  # asyncio, the fixture's default
    names = [
        name
        for name in BACKENDS
        if name in _backends(definition.iter_markers("backends"), definition.nodeid)
    ]
    if not names:
        raise pytest.UsageError(f"{definition.nodeid}: its backends marks leave no backend")
    if names != ["asyncio"]:
        metafunc.parametrize("anyio_backend", names, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Drop the runs a case's own mark (``pytest.param(..., marks=...)``) rules out.

    Parametrizing sees the test's and its module's marks only, so a run a case's mark
    rules out is made, then dropped here: as if never made, like a trio run of a test
    marked for asyncio alone, not reported as deselected.
    """

    def wanted(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "anyio_backend" not in callspec.params:
            return True
        return callspec.params["anyio_backend"] in _backends(callspec.marks, item.nodeid)

    items[:] = [item for item in items if wanted(item)]


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The backend of this run: asyncio unless the test's ``backends`` marks allow others."""
    return str(getattr(request, "param", "asyncio"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GROKIMAGINE_API_KEY",
        "GROKIMAGINE_BASE_URL",
        "GROKIMAGINE_TIER",
        "GROKIMAGINE_POLL_INTERVAL",
        "GROKIMAGINE_RATE_LIMIT",
        "GROKIMAGINE_REDIS_URL",
        "GROKIMAGINE_REDIS_FALLBACK",
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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real, empty ``redis-server`` on a loopback port of its own, stopped afterwards.

    One per test: starting one takes about 10 ms, so no test sees another's keys (and
    each pytest-xdist worker runs its own).
    """
    server = RedisServer()
    server.start()
    yield server
    server.stop()
