"""The simulated server as a raw ASGI application."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio

from ._config import DOCUMENTED_MODES, DOCUMENTED_RATIOS, Phase, SimulatorConfig
from ._counters import RateLimiterBank, Window, rate_limit_headers, retry_after_header
from ._faults import Fault, FaultPlan
from ._state import SimTask, TaskStore
from ._stats import SimulatorStats
from ._video import EXPIRED_BODY, NOT_FOUND_BODY, fake_mp4

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DROP_EXTENSION = "grokimagine.simulator.drop"
"""Scope extension a server may provide: an async callable that closes the connection."""

_VIDEO_PATH = re.compile(r"/videos/(?P<task_id>[^/]+)/(?P<number>[0-9]{1,6})\.mp4")

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Invalid request", "INVALID_REQUEST"),
    401: ("Unauthorized: missing or invalid API token", "UNAUTHORIZED"),
    403: ("Forbidden", "FORBIDDEN"),
    404: ("Task not found", "NOT_FOUND"),
    405: ("Method not allowed", "METHOD_NOT_ALLOWED"),
    429: ("Rate limit exceeded, please slow down", "RATE_LIMITED"),
    500: ("Internal server error", "SERVER_ERROR"),
    502: ("Bad gateway", "BAD_GATEWAY"),
    503: ("Service temporarily unavailable", "SERVICE_UNAVAILABLE"),
    504: ("Gateway timeout", "GATEWAY_TIMEOUT"),
}

_REASONS: dict[int, str] = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}

_JSON = b"application/json"

# Often drawn where they change nothing (a task still running, a URL that has had its
# 404), so they are counted where they change an answer rather than where drawn.
_COUNTED_WHEN_SHOWN = frozenset({"status_backwards", "video_not_found"})


class SimulatedDisconnect(Exception):
    """Raised out of the ASGI app when it must drop a connection but the server offers no way.

    Servers run by the simulator itself (``serve``, ``serve_in_thread``, ``run``) and
    ``Simulator.transport()`` close the connection cleanly instead; under any other
    ASGI server the answer's headers go out with a ``Content-Length`` and then this
    exception cuts the body off.
    """


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    scheme: str
    #: The ``Host`` the request came in on, port included when there is one.
    host: str

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def fill(self, template: str) -> str:
        """``template`` with ``{scheme}``, ``{host}`` and ``{port}`` of this request."""
        host = self.host
        if host.startswith("["):
            end = host.find("]") + 1
            name, port = host[:end], host[end + 1 :]
        else:
            name, _, port = host.partition(":")
        port = port or ("443" if self.scheme == "https" else "80")
        return (
            template.replace("{scheme}", self.scheme)
            .replace("{host}", name)
            .replace("{port}", port)
        )

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes) -> _Request:
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            headers[bytes(name).decode("latin-1").lower()] = bytes(value).decode("latin-1")
        host = headers.get("host")
        if not host:
            server = scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        scheme = scope.get("scheme") or "http"
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        return cls(
            method=str(scope.get("method", "GET")).upper(),
            path=str(scope.get("path", "/")),
            query=parse_qs(query),
            headers=headers,
            body=body,
            scheme=scheme,
            host=host,
        )


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: bytes = _JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    drop: bool = False
    delay: float = 0.0
    #: The task this answer tells the client about, while its id is still to be sent.
    reports: SimTask | None = None

    @property
    def logged_status(self) -> int:
        return 0 if self.drop else self.status


def _json_body(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _html_page(status: int) -> bytes:
    title = f"{status} {_REASONS.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def _bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class SimulatorApp:
    """Holds the simulator's state and answers ASGI HTTP requests from it."""

    def __init__(
        self, config: SimulatorConfig, clock: Callable[[], float], seed: int | None
    ) -> None:
        self.config = config
        self.clock = clock
        # The app may run on a server thread while a test thread reads stats or injects
        # faults; every touch of the state happens under this lock.
        self.lock = threading.Lock()
        root = random.Random(seed)
        # Separate streams keep task timing reproducible however many fault draws happen.
        self._tasks_rng = random.Random(root.getrandbits(64))
        self.faults = FaultPlan(random.Random(root.getrandbits(64)))
        self.store = TaskStore(config, self._tasks_rng)
        self._modes = (*DOCUMENTED_MODES, *config.extra_modes)
        self._ratios = (*DOCUMENTED_RATIOS, *config.extra_ratios)
        self._api_keys = None if config.api_keys is None else frozenset(config.api_keys)
        self._reset_locked()

    def _reset_locked(self) -> None:
        self.origin = self.clock()
        self.limiters = RateLimiterBank(self.config, self.origin)
        self.stats = SimulatorStats(period=self.config.period)
        self.store.clear()
        # By (task id, number): a URL 404s once, so a client's retry of it gets the file.
        self.not_found_once: set[tuple[str, int]] = set()

    def reset(self) -> None:
        with self.lock:
            self._reset_locked()

    def _stats_locked(self) -> SimulatorStats:
        stats = self.stats.copy()
        stats.background_requests = self.limiters.background_sent
        stats.background_rejected = self.limiters.background_refused
        return stats

    def stats_snapshot(self) -> SimulatorStats:
        with self.lock:
            return self._stats_locked()

    def tasks_snapshot(self) -> dict[str, SimTask]:
        with self.lock:
            return self.store.snapshot()

    # ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        request = _Request.from_scope(scope, body)
        with self.lock:
            reply = self._handle(request)
        answered = False
        try:
            answered = await _deliver(reply, scope, receive, send)
        finally:
            # A client that hung up during a delay (or, in-process, cancelled the call)
            # never sees the task id the answer carried. A reset while the answer was
            # held back has forgotten the task; the new stats must not count it.
            task = reply.reports
            if task is not None and not answered:
                with self.lock:
                    if self.store.get(task.task_id) is not None:
                        self._unreported(task)

    # Routing and answers (all called with the lock held)

    def _handle(self, request: _Request) -> _Reply:
        now = self.clock()
        wall_offset = time.time() - now
        path = request.path
        if path == "/v1/generate":
            return self._api(request, "generate", "POST", now, wall_offset)
        if path == "/v1/status":
            return self._api(request, "status", "GET", now, wall_offset)
        match = _VIDEO_PATH.fullmatch(path)
        if match:
            number = int(match["number"])
            return self._video(request, match["task_id"], number, now, wall_offset)
        if path == "/_sim/stats":
            if request.method != "GET":
                return self._error(405)
            return _Reply(200, _json_body(self._stats_locked().to_dict()))
        if path == "/_sim/tasks":
            # When each task was created and finishes, on the simulator's clock (on
            # Linux, time.monotonic is one clock for every process on the machine).
            if request.method != "GET":
                return self._error(405)
            tasks = [
                {"task_id": t.task_id, "created_at": t.created_at, "finished_at": t.finished_at}
                for t in self.store.snapshot().values()
            ]
            return _Reply(200, _json_body({"tasks": tasks}))
        if path == "/_sim/reset":
            if request.method != "POST":
                return self._error(405)
            self._reset_locked()
            return _Reply(200, _json_body({"code": 200, "message": "success"}))
        reply = self._error(404, "Not found")
        self.stats.record(now, "other", reply.status, counted=False)
        return reply

    def _error(self, code: int, message: str | None = None, *, in_200: bool = False) -> _Reply:
        default_message, word = _ERRORS.get(code, ("Error", "ERROR"))
        payload = {"code": code, "message": message or default_message, "error": word}
        status = 200 if in_200 or self.config.errors_as_http_200 else code
        return _Reply(status, _json_body(payload))

    def _invalid(self, problem: str) -> _Reply:
        return self._error(400, f"Invalid request: {problem}")

    def _api(
        self, request: _Request, endpoint: str, method: str, now: float, wall_offset: float
    ) -> _Reply:
        if request.method != method:
            reply = self._error(405)
            self.stats.record(now, endpoint, reply.status, counted=False)
            return reply
        token = _bearer_token(request.headers.get("authorization"))
        if token is None or (self._api_keys is not None and token not in self._api_keys):
            reply = self._error(401)
            self.stats.record(now, endpoint, reply.status, counted=False)
            return reply

        fault = self._pick_fault(endpoint)
        if fault is not None and not fault.processed:
            reply = self._unprocessed(fault, token, now, wall_offset)
            self.stats.record(now, endpoint, reply.logged_status, counted=False)
            return reply

        config = self.config
        rate_headers: list[tuple[bytes, bytes]] = []
        counted = endpoint == "generate" or config.count_status
        if counted:
            decision = self.limiters.hit(token, now)
            if config.rate_headers:
                rate_headers = rate_limit_headers(
                    decision.window, now, wall_offset, config.reset_format, config.time_scale
                )
                # The IETF header that names the window: a client that was not told the
                # plan learns a compressed minute from it (the real API sends none).
                policy = f"{config.limit_for(token)};w={config.period:g}"
                rate_headers.append((b"ratelimit-policy", policy.encode()))
            if not decision.allowed:
                reply = self._error(429)
                reply.headers = rate_headers
                if config.retry_after is not None:
                    reply.headers.append(
                        retry_after_header(
                            decision.window.retry_at,
                            now,
                            wall_offset,
                            config.retry_after,
                            config.time_scale,
                        )
                    )
                self.stats.rate_limited += 1
                self._spoil(fault, reply)
                self.stats.record(now, endpoint, reply.logged_status, counted=False)
                return reply

        if endpoint == "generate":
            reply = self._generate(request, now, wall_offset)
        else:
            backwards = fault is not None and fault.kind == "status_backwards"
            reply = self._status(request, now, backwards=backwards)
        reply.headers.extend(rate_headers)
        self._spoil(fault, reply)
        task = reply.reports
        if task is not None and (reply.drop or task.task_id.encode() not in reply.body):
            self._unreported(task)
            reply.reports = None
        self.stats.record(now, endpoint, reply.logged_status, counted=counted)
        return reply

    def _unreported(self, task: SimTask) -> None:
        self.stats.tasks_unreported += 1
        self.stats.unreported.append(deepcopy(task.request))

    def _pick_fault(self, endpoint: str) -> Fault | None:
        fault = self.faults.pick(endpoint)
        if fault is not None and fault.kind not in _COUNTED_WHEN_SHOWN:
            self.stats.faults[fault.kind] += 1
        return fault

    def _spoil(self, fault: Fault | None, reply: _Reply) -> None:
        """Apply a processed ``fault`` to the answer the server gave."""
        if fault is None:
            return
        if fault.kind == "truncated_json":
            reply.body = reply.body[: len(reply.body) // 2]
        elif fault.kind == "empty_body":
            reply.body = b""
        elif fault.kind == "reset_after":
            reply.drop = True
        elif fault.kind == "delay":
            reply.delay = fault.seconds or 0.0
        elif fault.kind == "server_error_after":
            error = self._error(500)
            reply.status, reply.body, reply.content_type = (
                error.status,
                error.body,
                error.content_type,
            )

    def _unprocessed(
        self, fault: Fault, token: str | None, now: float, wall_offset: float
    ) -> _Reply:
        if fault.kind == "html":
            status = fault.status or 502
            return _Reply(status, _html_page(status), content_type=b"text/html")
        if fault.kind == "server_error":
            return self._error(500)
        if fault.kind == "error_in_200":
            code = fault.status or 500
            if code == 429:
                self.stats.rate_limited += 1
            return self._error(code, in_200=True)
        if fault.kind == "rate_limited":
            return self._forced_429(fault, token, now, wall_offset)
        return _Reply(0, drop=True)

    def _forced_429(
        self, fault: Fault, token: str | None, now: float, wall_offset: float
    ) -> _Reply:
        config = self.config
        self.stats.rate_limited += 1
        reply = self._error(429)
        seconds = 1.0 if fault.seconds is None else fault.seconds
        if token is not None and config.rate_headers:
            window = self.limiters.peek(token, now)
            forced = Window(
                remaining=0,
                reset_at=max(window.reset_at, now + seconds),
                retry_at=now + seconds,
            )
            reply.headers = rate_limit_headers(
                forced, now, wall_offset, config.reset_format, config.time_scale
            )
        if config.retry_after is not None:
            reply.headers.append(
                retry_after_header(
                    now + seconds, now, wall_offset, config.retry_after, config.time_scale
                )
            )
        return reply

    def _generate(self, request: _Request, now: float, wall_offset: float) -> _Reply:
        try:
            payload = json.loads(request.body)
        except ValueError:
            return self._invalid("The request body must be valid JSON")
        if not isinstance(payload, dict):
            return self._invalid("The request body must be a JSON object")
        problem = self._validate(payload)
        if problem is not None:
            return self._invalid(problem)
        task = self.store.create(payload, now, now + wall_offset)
        self.stats.tasks_created += 1
        self.stats.created.append(deepcopy(payload))
        return _Reply(
            200,
            _json_body({"code": 200, "message": "success", "data": {"task_id": task.task_id}}),
            reports=task,
        )

    def _validate(self, payload: dict[str, Any]) -> str | None:
        prompt = payload.get("prompt")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            return "The prompt parameter is required"
        if not isinstance(prompt, str):
            return "The prompt parameter must be a string"
        mode = payload.get("mode")
        if mode is not None and (not isinstance(mode, str) or mode not in self._modes):
            return f"The mode parameter must be one of: {', '.join(self._modes)}"
        ratio = payload.get("ratio")
        if ratio is not None and (not isinstance(ratio, str) or ratio not in self._ratios):
            return f"The ratio parameter must be one of: {', '.join(self._ratios)}"
        images = payload.get("images")
        if images is not None and (
            not isinstance(images, list) or not all(_is_http_url(i) for i in images)
        ):
            return "The images parameter must be a list of http(s) image URLs"
        return None

    def _status(self, request: _Request, now: float, *, backwards: bool) -> _Reply:
        task_id = (request.query.get("task_id") or [""])[0].strip()
        if not task_id:
            return self._invalid("The task_id parameter is required")
        task = self.store.get(task_id)
        if task is None:
            return self._error(404)
        template = self.config.video_base_url
        base = request.base_url if template is None else request.fill(template)
        shown: Phase | None = None
        if backwards and task.phase(now) in ("completed", "failed"):
            shown = "running"
            self.stats.faults["status_backwards"] += 1
        data = self.store.status_data(task, now, base, phase=shown)
        return _Reply(200, _json_body({"code": 200, "message": "success", "data": data}))

    def _video(
        self, request: _Request, task_id: str, number: int, now: float, wall_offset: float
    ) -> _Reply:
        stats = self.stats
        if request.method not in ("GET", "HEAD"):
            reply = _Reply(405, b"Method Not Allowed\n", content_type=b"text/plain")
            stats.record(now, "video", reply.status, counted=False)
            return reply
        stats.video_requests += 1
        if "authorization" in request.headers:
            stats.video_requests_with_auth += 1
        if self.config.video_redirect and "sig" not in request.query:
            sig = hashlib.sha256(f"{task_id}/{number}".encode()).hexdigest()[:16]
            signed = f"{request.path}?sig={sig}"
            reply = _Reply(
                302, b"", content_type=b"text/plain", headers=[(b"location", signed.encode())]
            )
            stats.record(now, "video", reply.status, counted=False)
            return reply
        fault = self._pick_fault("video")
        if fault is not None and not fault.processed:
            reply = self._unprocessed(fault, None, now, wall_offset)
        else:
            reply = self._video_file(task_id, number, now)
            if fault is not None and fault.kind == "video_not_found":
                reply = self._not_found_once(task_id, number, reply)
            else:
                self._spoil(fault, reply)
        stats.record(now, "video", reply.logged_status, counted=False)
        return reply

    def _not_found_once(self, task_id: str, number: int, reply: _Reply) -> _Reply:
        key = (task_id, number)
        if reply.status != 200 or key in self.not_found_once:
            return reply
        self.not_found_once.add(key)
        self.stats.faults["video_not_found"] += 1
        return _Reply(404, NOT_FOUND_BODY, content_type=b"application/xml")

    def _video_file(self, task_id: str, number: int, now: float) -> _Reply:
        task = self.store.get(task_id)
        if task is None or task.phase(now) != "completed" or not 1 <= number <= task.videos:
            return _Reply(404, NOT_FOUND_BODY, content_type=b"application/xml")
        ttl = self.config.video_ttl
        if ttl is not None and now >= task.finished_at + ttl:
            return _Reply(403, EXPIRED_BODY, content_type=b"application/xml")
        body = fake_mp4(task_id, number, self.config.video_bytes)
        return _Reply(200, body, content_type=b"video/mp4")

    # Test helpers

    def finish_now(self, task_id: str, *, error_message: str | None, videos: int | None) -> None:
        with self.lock:
            if self.store.get(task_id) is None:
                raise KeyError(task_id)
            self.store.finish_now(task_id, self.clock(), error_message=error_message, videos=videos)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _deliver(reply: _Reply, scope: Scope, receive: Receive, send: Send) -> bool:
    """Send ``reply``; whether an answer went out (not when dropped or the client left)."""
    if reply.delay > 0 and await _client_left_during(reply.delay, receive):
        return False
    if reply.drop:
        await _drop(scope, receive, send)
        return False
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})
    return True


async def _client_left_during(seconds: float, receive: Receive) -> bool:
    """Sleep ``seconds``; stop early (and say so) if the client hangs up meanwhile."""
    left = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        await anyio.sleep(seconds)
        group.cancel_scope.cancel()
    return left


async def _drop(scope: Scope, receive: Receive, send: Send) -> None:
    drop = (scope.get("extensions") or {}).get(DROP_EXTENSION)
    if drop is not None:
        await drop()
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", _JSON), (b"content-length", b"1")],
        }
    )
    raise SimulatedDisconnect("connection dropped on purpose by an injected fault")
