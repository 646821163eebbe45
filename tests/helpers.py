"""Scripted API answers for tests that don't need the simulator."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from grokimagine_async import AsyncClient, RateLimit

TOKEN = "sk-test-SECRET-7f3a9c"
SIM_URL = "http://api.test"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A scripted API: answers requests in turn from a list, records them."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def make_client(recorder: Recorder, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("rate_limit", RateLimit(10_000, 1.0))
    return AsyncClient(
        TOKEN,
        base_url=SIM_URL,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(recorder)),
        **kwargs,
    )


def ok(data: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(
        200, json={"code": 200, "message": "success", "data": data}, headers=headers
    )


def api_error(status: int, error: str, message: str, **headers: str) -> httpx.Response:
    body = {"code": status, "message": message, "error": error}
    return httpx.Response(status, json=body, headers=headers)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py``, which is not a package."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
