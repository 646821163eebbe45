"""Bad input, and the error each gets before anything is sent.

One table, ``ROWS``, drives three parametrised tests (the library, the command line,
batch files) and the page docs/reference/bad-input.md, whose table is rendered from
it: ``test_the_page_shows_the_table`` fails when the two differ, and
``python -m tests.test_bad_input`` rewrites the page's table.

Every row asserts the error's class (or the command's exit code), that its message
names the field or flag and the fix, that the token is not in it, and that no request
was sent: the library against a scripted API that counts what reaches it, the
command line against the simulator on loopback, whose stats must see nothing.

A row whose input is not refused that way yet carries ``open=``, what happens today:
the test is a strict expected failure, and the page says so beside the row.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx
import pytest
import typer.testing

from grokimagine_async import (
    AsyncClient,
    ConfigurationError,
    DownloadError,
    GenerateRequest,
    GrokImagineError,
    JournalError,
    RateLimit,
    RequestValidationError,
    Task,
    Unchecked,
)
from grokimagine_async._cli._app import app
from grokimagine_async._cli._app import cli as grokimagine
from grokimagine_async.simulator import Simulator

from .helpers import SIM_URL, TOKEN, api_error, ok

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "bad-input.md"
START = "<!-- bad-input table: rendered from tests/test_bad_input.py, do not edit by hand -->"
END = "<!-- end of the bad-input table -->"

#: A token that cannot go in a header: the rows that pass one check it is not echoed.
BAD_TOKEN = "sk-bad SECRET-4d2e"


# -- the harness the library rows run in ------------------------------------------------


class Harness:
    """A scripted API that counts every request, and clients that send only to it.

    A submission gets a task id (so a call that goes on past a check it should have
    failed shows it); any other request gets a 401, which ends every call at once.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._answer)
        self.http = httpx.AsyncClient(transport=self.transport)
        self._sync: list[httpx.Client] = []

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            return ok({"task_id": "task_1"})
        return api_error(401, "UNAUTHORIZED", "token refused")

    def client(self, **options: Any) -> AsyncClient:
        """An ``AsyncClient`` on the scripted API; an option given (even None) wins."""
        options.setdefault("api_key", TOKEN)
        options.setdefault("base_url", SIM_URL)
        options.setdefault("http_client", self.http)
        options.setdefault("rate_limit", RateLimit(10_000, 1.0))
        # A call that goes on where it should have stopped ends at its first poll, soon.
        options.setdefault("poll_interval", 0.01)
        return AsyncClient(**options)

    def sync_http(self) -> httpx.Client:
        """A synchronous httpx client on the same scripted API (closed afterwards)."""
        http = httpx.Client(transport=self.transport)
        self._sync.append(http)
        return http

    def completed(self) -> Task:
        return Task.model_validate(
            {"task_id": "task_1", "status": "completed", "response": ["https://cdn.test/1.mp4"]}
        )

    def a_file(self) -> Path:
        path = self.tmp / "a-file.txt"
        path.write_text("not a folder\n")
        return path

    async def first_outcome(self, pipeline: Any) -> Any:
        """Enter a ``generate_many`` pipeline; raise its first outcome's error, if any."""
        first = None
        async with pipeline as results:
            first = await anext(aiter(results), None)
        # Raised out here: inside the block, the pipeline's task group would wrap it.
        if first is not None and first.error is not None:
            raise first.error
        return first

    async def submitted(self, outcomes: Awaitable[list[Any]]) -> list[Any]:
        """Await ``submit_many``; raise the first outcome's error, if any."""
        done = await outcomes
        for outcome in done:
            if outcome.error is not None:
                raise outcome.error
        return done

    async def first_task(self, watch: Any) -> Any:
        async for task in watch:
            return task
        return None

    async def run(self, call: Callable[[Harness], object]) -> None:
        """Make the call, and await what it returns if that is awaitable."""
        result = call(self)
        if inspect.isawaitable(result):
            await result

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for http in self._sync:
            http.close()
        await self.http.aclose()


Call = Callable[[Harness], object]


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One bad input, the error it gets, and the words its message must hold."""

    #: The table's section: a key of SECTIONS.
    kind: str
    id: str
    #: The input as the page shows it (Markdown).
    shown: str
    #: The error as the page shows it: a class name, or ``exit 2``.
    error: str
    #: The word naming the field, flag or line at fault.
    field: str
    #: Words that say what to do.
    fix: tuple[str, ...]
    #: What happens today, for an input not yet refused as the row says (an xfail).
    open: str | None = None
    # Library rows.
    call: Call | None = None
    raises: type[BaseException] = GrokImagineError
    secret: str = TOKEN
    #: Environment variables to set (None: unset) for the row.
    env: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    # Command-line rows.
    commands: tuple[str, ...] = ()
    #: The command's own arguments, when the row is about them (else FIRST_ARGS).
    first: tuple[str, ...] | None = None
    argv: tuple[str, ...] = ()
    exit: int = 2
    #: Options the harness would add (token, address, rate, ...) to leave out.
    omit: tuple[str, ...] = ()
    # Batch-file rows.
    file: str = ""
    content: str | bytes = ""

    @property
    def marks(self) -> list[pytest.MarkDecorator]:
        return [pytest.mark.xfail(strict=True, reason=self.open)] if self.open else []


SECTIONS = {
    "request": "Request fields",
    "client": "Client options",
    "env": "Environment variables",
    "calls": "Options of the calls",
    "cli": "Command-line flags",
    "file": "Batch files",
}


def _words(fix: str | tuple[str, ...]) -> tuple[str, ...]:
    return (fix,) if isinstance(fix, str) else fix


def lib(
    kind: str,
    id: str,
    shown: str,
    raises: type[BaseException],
    field: str,
    fix: str | tuple[str, ...],
    call: Call,
    *,
    env: Mapping[str, str | None] | None = None,
    secret: str = TOKEN,
    error: str | None = None,
    open: str | None = None,
) -> Row:
    return Row(
        kind=kind,
        id=id,
        shown=shown,
        error=error or f"`{raises.__name__}`",
        field=field,
        fix=_words(fix),
        open=open,
        call=call,
        raises=raises,
        secret=secret,
        env=env or {},
    )


#: Where each command's own argument comes from, so a row names only the flag at fault.
FIRST_ARGS = {
    "generate": ("a fox",),
    "batch": ("{prompts}",),
    "status": ("task_1",),
    "download": ("task_1",),
    "simulate": (),
    "demo": (),
}
#: What the page calls the paths the placeholders stand for.
PLACEHOLDERS = {
    "{prompts}": "prompts.txt",
    "{file}": "notes.txt",
    "{dir}": "somewhere/",
    "{missing}": "missing.txt",
    "{empty}": "empty.txt",
}
API_COMMANDS = ("generate", "batch", "status", "download")


def _placeheld(text: str) -> str:
    for placeholder, name in PLACEHOLDERS.items():
        text = text.replace(placeholder, name)
    return text


def cli(
    id: str,
    commands: str | tuple[str, ...],
    args: str,
    field: str,
    fix: str | tuple[str, ...],
    *,
    env: Mapping[str, str | None] | None = None,
    omit: tuple[str, ...] = (),
    exit: int = 2,
    first: str | None = None,
    shown: str | None = None,
    open: str | None = None,
) -> Row:
    commands = (commands,) if isinstance(commands, str) else commands
    argv = tuple(shlex.split(args))
    positional = None if first is None else tuple(shlex.split(first))
    if shown is None:
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items() if v is not None)
        if len(commands) == 1:
            own = FIRST_ARGS[commands[0]] if positional is None else positional
            words = ["grokimagine", commands[0], *own, *argv]
            shown = f"`{prefix}{shlex.join(_placeheld(w) for w in words)}`"
        else:
            shown = f"`{(prefix + _placeheld(args)).strip()}` on {', '.join(commands)}"
    return Row(
        kind="cli",
        id=id,
        shown=shown,
        error=f"exit {exit}",
        field=field,
        fix=_words(fix),
        open=open,
        env=env or {},
        commands=commands,
        first=positional,
        argv=argv,
        exit=exit,
        omit=omit,
    )


def batch_file(
    id: str,
    name: str,
    content: str | bytes,
    field: str,
    fix: str | tuple[str, ...],
    *,
    shown: str | None = None,
    open: str | None = None,
) -> Row:
    if shown is None:
        assert isinstance(content, str)
        lines = content.rstrip("\n").split("\n")
        shown = f"`{name}` holding " + (
            " ⏎ ".join(f"`{line}`" for line in lines) if content else "nothing"
        )
    return Row(
        kind="file",
        id=id,
        shown=shown,
        error="exit 2",
        field=field,
        fix=_words(fix),
        open=open,
        file=name,
        content=content,
    )


RVE, CFG = RequestValidationError, ConfigurationError

REQUEST_ROWS = [
    lib(
        "request",
        "prompt-missing",
        "`submit(mode='fun')`",
        RVE,
        "prompt",
        "Pass prompt=",
        lambda h: h.client().submit(mode="fun"),
    ),
    lib(
        "request",
        "prompt-empty",
        "`submit(prompt='')`",
        RVE,
        "prompt",
        "Describe the video",
        lambda h: h.client().submit(prompt=""),
    ),
    lib(
        "request",
        "prompt-blank",
        "`submit(prompt='   ')`",
        RVE,
        "prompt",
        "Describe the video",
        lambda h: h.client().submit(prompt="   "),
    ),
    lib(
        "request",
        "prompt-not-text",
        "`submit({'prompt': 42})`",
        RVE,
        "prompt",
        "as a string",
        lambda h: h.client().submit({"prompt": 42}),
    ),
    lib(
        "request",
        "mode-undocumented",
        "`submit(prompt='a fox', mode='wild')`",
        RVE,
        "mode",
        ("Fix the spelling", "mode=Unchecked('wild')"),
        lambda h: h.client().submit(prompt="a fox", mode="wild"),
    ),
    lib(
        "request",
        "mode-not-text",
        "`submit({'prompt': 'a fox', 'mode': 3})`",
        RVE,
        "mode",
        "Pass one of fun, normal, spicy",
        lambda h: h.client().submit({"prompt": "a fox", "mode": 3}),
    ),
    lib(
        "request",
        "mode-unchecked-empty",
        "`submit(prompt='a fox', mode=Unchecked(' '))`",
        RVE,
        "mode",
        "Pass one of fun, normal, spicy",
        lambda h: h.client().submit(prompt="a fox", mode=Unchecked(" ")),
    ),
    lib(
        "request",
        "ratio-undocumented",
        "`submit(prompt='a fox', ratio='16:9')`",
        RVE,
        "ratio",
        ("Fix the spelling", "ratio=Unchecked('16:9')"),
        lambda h: h.client().submit(prompt="a fox", ratio="16:9"),
    ),
    lib(
        "request",
        "ratio-empty",
        "`submit(prompt='a fox', ratio='')`",
        RVE,
        "ratio",
        "Pass one of 1:1, 2:3, 3:2",
        lambda h: h.client().submit(prompt="a fox", ratio=""),
    ),
    lib(
        "request",
        "images-not-http",
        "`submit(prompt='a fox', images=['ftp://x/a.png'])`",
        RVE,
        "images",
        "Upload the image somewhere the API can fetch it",
        lambda h: h.client().submit(prompt="a fox", images=["ftp://x/a.png"]),
    ),
    lib(
        "request",
        "images-not-a-list",
        "`submit({'prompt': 'a fox', 'images': 5})`",
        RVE,
        "images",
        "images=['https://",
        lambda h: h.client().submit({"prompt": "a fox", "images": 5}),
    ),
    lib(
        "request",
        "images-item-not-text",
        "`submit({'prompt': 'a fox', 'images': [3]})`",
        RVE,
        "images",
        "pass that URL",
        lambda h: h.client().submit({"prompt": "a fox", "images": [3]}),
    ),
    lib(
        "request",
        "unknown-field",
        "`submit({'prompt': 'a fox', 'size': 3})`",
        RVE,
        "size",
        "Use only prompt, mode, ratio, images",
        lambda h: h.client().submit({"prompt": "a fox", "size": 3}),
    ),
    lib(
        "request",
        "field-name-not-text",
        "`submit({1: 'a fox'})`",
        RVE,
        "field name",
        "Use string keys",
        lambda h: h.client().submit({1: "a fox"}),  # type: ignore[dict-item]
    ),
    lib(
        "request",
        "request-not-a-mapping",
        "`submit(42)`",
        RVE,
        "request",
        "Pass GenerateRequest(prompt=...) or a dict",
        lambda h: h.client().submit(42),  # type: ignore[arg-type]
    ),
    lib(
        "request",
        "model-ratio",
        "`GenerateRequest(prompt='a fox', ratio='16:9')`",
        RVE,
        "ratio",
        "Unchecked('16:9')",
        lambda h: GenerateRequest(prompt="a fox", ratio="16:9"),
    ),
    lib(
        "request",
        "generate-prompt",
        "`generate(prompt='')`",
        RVE,
        "prompt",
        "Describe the video",
        lambda h: h.client().generate(prompt=""),
    ),
    lib(
        "request",
        "generate-many-item",
        "`generate_many([{'prompt': 'a fox', 'ratio': '16:9'}])`",
        RVE,
        "ratio",
        "Unchecked('16:9')",
        lambda h: h.first_outcome(h.client().generate_many([{"prompt": "a fox", "ratio": "16:9"}])),
        error="`RequestValidationError` as the outcome's `error` (status `error`)",
    ),
    lib(
        "request",
        "submit-many-item",
        "`submit_many([{'prompt': ''}])`",
        RVE,
        "prompt",
        "Describe the video",
        lambda h: h.submitted(h.client().submit_many([{"prompt": ""}])),
        error="`RequestValidationError` as the outcome's `error`",
    ),
    lib(
        "request",
        "task-id-empty",
        "`get_task('')`",
        RVE,
        "task_id",
        "Pass the id that submit() returned",
        lambda h: h.client().get_task(""),
    ),
    lib(
        "request",
        "task-id-not-text",
        "`get_task(123)`",
        RVE,
        "task_id",
        "Pass the id that submit() returned",
        lambda h: h.client().get_task(123),  # type: ignore[arg-type]
    ),
    lib(
        "request",
        "wait-task-id",
        "`wait('  ')`",
        RVE,
        "task_id",
        "Pass the id that submit() returned",
        lambda h: h.client().wait("  "),
    ),
    lib(
        "request",
        "download-task-id",
        "`download('', 'videos')`",
        RVE,
        "task_id",
        "Pass the id that submit() returned",
        lambda h: h.client().download("", h.tmp),
    ),
    lib(
        "request",
        "download-task-not-text",
        "`download(123, 'videos')`",
        RVE,
        "task",
        "Pass a Task or the id that submit() returned",
        lambda h: h.client().download(123, h.tmp),  # type: ignore[arg-type]
    ),
    lib(
        "request",
        "watch-task-id",
        "`watch([''])`",
        RVE,
        "task_id",
        "Pass the id that submit() returned",
        lambda h: h.first_task(h.client().watch([""])),
    ),
    lib(
        "request",
        "watch-one-id",
        "`watch('task_1')`",
        RVE,
        "task_ids",
        "Pass a list",
        lambda h: h.first_task(h.client().watch("task_1")),
    ),
]

CLIENT_ROWS = [
    lib(
        "client",
        "api-key-missing",
        "`AsyncClient()`, no `GROKIMAGINE_API_KEY`",
        CFG,
        "api_key",
        "GROKIMAGINE_API_KEY environment variable",
        lambda h: h.client(api_key=None),
    ),
    lib(
        "client",
        "api-key-spaces",
        f"`AsyncClient('{BAD_TOKEN}')`",
        CFG,
        "api_key",
        "copy the token again",
        lambda h: h.client(api_key=BAD_TOKEN),
        secret=BAD_TOKEN,
    ),
    lib(
        "client",
        "api-key-not-text",
        "`AsyncClient(123)`",
        CFG,
        "api_key",
        "the token from your Grok Imagine dashboard",
        lambda h: h.client(api_key=123),
    ),
    lib(
        "client",
        "base-url-scheme",
        "`base_url='ftp://x'`",
        CFG,
        "base_url",
        "such as https://grokimagineapi.com",
        lambda h: h.client(base_url="ftp://x"),
    ),
    lib(
        "client",
        "base-url-query",
        "`base_url='https://x.example/?a=1'`",
        CFG,
        "base_url",
        "must not have a query",
        lambda h: h.client(base_url="https://x.example/?a=1"),
    ),
    lib(
        "client",
        "base-url-credentials",
        "`base_url='https://me:hunter2@api.example.com'`",
        CFG,
        "base_url",
        "pass the API token as api_key",
        lambda h: h.client(base_url="https://me:hunter2@api.example.com"),
        secret="hunter2",
    ),
    lib(
        "client",
        "base-url-plain-http",
        "`base_url='http://api.example.com'`",
        CFG,
        "base_url",
        ("Use https://api.example.com", "allow_insecure_http=True"),
        lambda h: h.client(base_url="http://api.example.com"),
    ),
    lib(
        "client",
        "tier",
        "`tier='gold'`",
        CFG,
        "tier",
        "Use one of free, pro, enterprise",
        lambda h: h.client(tier="gold"),
    ),
    lib(
        "client",
        "rate-limit-type",
        "`rate_limit=5`",
        CFG,
        "rate_limit",
        "RateLimit(requests=100, period=60)",
        lambda h: h.client(rate_limit=5),
    ),
    lib(
        "client",
        "rate-limit-requests",
        "`rate_limit=RateLimit(0)`",
        CFG,
        "rate_limit.requests",
        "at least 1",
        lambda h: h.client(rate_limit=RateLimit(0)),
    ),
    lib(
        "client",
        "rate-limit-period",
        "`rate_limit=RateLimit(100, period=0)`",
        CFG,
        "rate_limit.period",
        "above 0",
        lambda h: h.client(rate_limit=RateLimit(100, period=0)),
    ),
    lib(
        "client",
        "rate-limit-burst",
        "`rate_limit=RateLimit(100, burst=200)`",
        CFG,
        "rate_limit.burst",
        ("from 1 to requests", "leave it out"),
        lambda h: h.client(rate_limit=RateLimit(100, burst=200)),
    ),
    lib(
        "client",
        "timeout",
        "`timeout=-1`",
        CFG,
        "timeout",
        "above 0",
        lambda h: h.client(timeout=-1),
    ),
    lib(
        "client",
        "max-retries",
        "`max_retries=-1`",
        CFG,
        "max_retries",
        "whole number >= 0",
        lambda h: h.client(max_retries=-1),
    ),
    lib(
        "client",
        "backoff",
        "`backoff=-1`",
        CFG,
        "backoff",
        "seconds >= 0",
        lambda h: h.client(backoff=-1),
    ),
    lib(
        "client",
        "backoff-not-a-number",
        "`backoff='1'`",
        CFG,
        "backoff",
        "seconds >= 0",
        lambda h: h.client(backoff="1"),
    ),
    lib(
        "client",
        "retry-uncertain-submits",
        "`retry_uncertain_submits='no'`",
        CFG,
        "retry_uncertain_submits",
        "True or False",
        lambda h: h.client(retry_uncertain_submits="no"),
    ),
    lib(
        "client",
        "rate-limit-patience",
        "`rate_limit_patience=-1`",
        CFG,
        "rate_limit_patience",
        "e.g. 180",
        lambda h: h.client(rate_limit_patience=-1),
    ),
    lib(
        "client",
        "rate-limit-patience-bool",
        "`rate_limit_patience=True`",
        CFG,
        "rate_limit_patience",
        "e.g. 180",
        lambda h: h.client(rate_limit_patience=True),
    ),
    lib(
        "client",
        "poll-interval",
        "`poll_interval=0`",
        CFG,
        "poll_interval",
        "pass e.g. 5",
        lambda h: h.client(poll_interval=0),
    ),
    lib(
        "client",
        "http-client-sync",
        "`http_client=httpx.Client()`, then a call",
        CFG,
        "http_client",
        "httpx.AsyncClient",
        lambda h: h.client(http_client=h.sync_http()).get_task("task_1"),
    ),
    lib(
        "client",
        "limiter",
        "`limiter=RateLimit(100)`, then a call",
        CFG,
        "limiter",
        "rate_limit=",
        lambda h: h.client(limiter=RateLimit(100)).get_task("task_1"),
    ),
    lib(
        "client",
        "redis-url",
        "`redis_url='http://cache:6379'`",
        CFG,
        "redis_url",
        "such as redis://localhost:6379/0",
        lambda h: h.client(redis_url="http://cache:6379"),
    ),
    lib(
        "client",
        "redis-fallback",
        "`redis_fallback=2`",
        CFG,
        "redis_fallback",
        "such as 0.25",
        lambda h: h.client(redis_fallback=2),
    ),
    lib(
        "client",
        "max-retry-after",
        "`max_retry_after=0`",
        CFG,
        "max_retry_after",
        "e.g. 120",
        lambda h: h.client(max_retry_after=0),
    ),
    lib(
        "client",
        "allow-insecure-http",
        "`allow_insecure_http='yes'` with `base_url='http://api.example.com'`",
        CFG,
        "allow_insecure_http",
        "True or False",
        lambda h: h.client(base_url="http://api.example.com", allow_insecure_http="yes"),
    ),
]


def _env_row(
    id: str,
    name: str,
    value: str,
    field: str,
    fix: str | tuple[str, ...],
    *,
    open: str | None = None,
    **client: Any,
) -> Row:
    """A client option read from the environment: the argument itself is left unset."""
    return lib(
        "env",
        id,
        f"`{name}={value!r}`" if value.strip() != value or not value else f"`{name}={value}`",
        CFG,
        field,
        fix,
        lambda h: h.client(**client),
        env={name: value},
        secret=value if name == "GROKIMAGINE_API_KEY" and value else TOKEN,
        open=open,
    )


ENV_ROWS = [
    _env_row(
        "env-api-key-empty",
        "GROKIMAGINE_API_KEY",
        "",
        "GROKIMAGINE_API_KEY",
        "Pass AsyncClient(api_key=...)",
        api_key=None,
    ),
    _env_row(
        "env-api-key-spaces",
        "GROKIMAGINE_API_KEY",
        BAD_TOKEN,
        "GROKIMAGINE_API_KEY",
        "copy the token again",
        api_key=None,
    ),
    _env_row(
        "env-base-url",
        "GROKIMAGINE_BASE_URL",
        "ftp://x",
        "GROKIMAGINE_BASE_URL",
        "such as https://grokimagineapi.com",
        base_url=None,
    ),
    _env_row(
        "env-tier",
        "GROKIMAGINE_TIER",
        "gold",
        "GROKIMAGINE_TIER",
        "Use one of free, pro, enterprise",
    ),
    _env_row(
        "env-rate-limit",
        "GROKIMAGINE_RATE_LIMIT",
        "lots",
        "GROKIMAGINE_RATE_LIMIT",
        "such as 1000/60s",
        rate_limit=None,
    ),
    _env_row(
        "env-poll-interval",
        "GROKIMAGINE_POLL_INTERVAL",
        "soon",
        "GROKIMAGINE_POLL_INTERVAL",
        "pass e.g. 5",
        poll_interval=None,
    ),
    _env_row(
        "env-redis-url",
        "GROKIMAGINE_REDIS_URL",
        "http://cache:6379",
        "GROKIMAGINE_REDIS_URL",
        "such as redis://localhost:6379/0",
    ),
    _env_row(
        "env-redis-fallback",
        "GROKIMAGINE_REDIS_FALLBACK",
        "half",
        "GROKIMAGINE_REDIS_FALLBACK",
        "such as 0.25",
    ),
    _env_row(
        "env-allow-insecure-http",
        "GROKIMAGINE_ALLOW_INSECURE_HTTP",
        "perhaps",
        "GROKIMAGINE_ALLOW_INSECURE_HTTP",
        "set it to 1",
        base_url="http://api.example.com",
    ),
]

_ONE = [{"prompt": "a fox"}]

CALL_ROWS = [
    lib(
        "calls",
        "generate-many-one-request",
        "`generate_many({'prompt': 'a fox'})`",
        RVE,
        "requests",
        "Pass a list",
        lambda h: h.first_outcome(h.client().generate_many({"prompt": "a fox"})),  # type: ignore[dict-item]
    ),
    lib(
        "calls",
        "generate-many-journal",
        "`generate_many(..., journal='somewhere/')` (a folder)",
        JournalError,
        "journal",
        "pass the path of a new file",
        lambda h: h.first_outcome(h.client().generate_many(_ONE, journal=h.tmp)),
    ),
    lib(
        "calls",
        "generate-many-max-credits",
        "`generate_many(..., max_credits=-1)`",
        RVE,
        "max_credits",
        "Pass e.g. 4000",
        lambda h: h.client().generate_many(_ONE, max_credits=-1),
    ),
    lib(
        "calls",
        "generate-many-max-credits-text",
        "`generate_many(..., max_credits='4000')`",
        RVE,
        "max_credits",
        "Pass e.g. 4000",
        lambda h: h.client().generate_many(_ONE, max_credits="4000"),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "generate-many-credits-per-video",
        "`generate_many(..., credits_per_video=0)`",
        RVE,
        "credits_per_video",
        "Pass e.g. 40",
        lambda h: h.first_outcome(h.client().generate_many(_ONE, credits_per_video=0)),
    ),
    lib(
        "calls",
        "generate-many-concurrency",
        "`generate_many(..., concurrency=0)`",
        RVE,
        "concurrency",
        "Pass e.g. 16",
        lambda h: h.client().generate_many(_ONE, concurrency=0),
    ),
    lib(
        "calls",
        "generate-many-concurrency-fraction",
        "`generate_many(..., concurrency=2.5)`",
        RVE,
        "concurrency",
        "Pass e.g. 16",
        lambda h: h.client().generate_many(_ONE, concurrency=2.5),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "generate-many-timeout",
        "`generate_many(..., timeout=0)`",
        RVE,
        "timeout",
        "Pass e.g. 3600, or None",
        lambda h: h.client().generate_many(_ONE, timeout=0),
    ),
    lib(
        "calls",
        "generate-many-resubmit-uncertain",
        "`generate_many(..., resubmit_uncertain='no')`",
        RVE,
        "resubmit_uncertain",
        "True or False",
        lambda h: h.first_outcome(h.client().generate_many(_ONE, resubmit_uncertain="no")),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "generate-many-resubmit-failed",
        "`generate_many(..., resubmit_failed='no')`",
        RVE,
        "resubmit_failed",
        "True or False",
        lambda h: h.first_outcome(h.client().generate_many(_ONE, resubmit_failed="no")),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "generate-many-poll-interval",
        "`generate_many(..., poll_interval=0)`",
        RVE,
        "poll_interval",
        "Pass e.g. 5",
        lambda h: h.client().generate_many(_ONE, poll_interval=0),
    ),
    lib(
        "calls",
        "submit-many-one-request",
        "`submit_many({'prompt': 'a fox'})`",
        RVE,
        "requests",
        "Pass a list",
        lambda h: h.client().submit_many({"prompt": "a fox"}),  # type: ignore[dict-item]
    ),
    lib(
        "calls",
        "submit-many-concurrency",
        "`submit_many(..., concurrency=0)`",
        RVE,
        "concurrency",
        "Pass e.g. 16",
        lambda h: h.client().submit_many(_ONE, concurrency=0),
    ),
    lib(
        "calls",
        "watch-timeout",
        "`watch(['task_1'], timeout=0)`",
        RVE,
        "timeout",
        "Pass e.g. 3600, or None",
        lambda h: h.client().watch(["task_1"], timeout=0),
    ),
    lib(
        "calls",
        "watch-poll-interval",
        "`watch(['task_1'], poll_interval=-1)`",
        RVE,
        "poll_interval",
        "Pass e.g. 5",
        lambda h: h.client().watch(["task_1"], poll_interval=-1),
    ),
    lib(
        "calls",
        "wait-timeout",
        "`wait('task_1', timeout=0)`",
        RVE,
        "timeout",
        "Pass e.g. 600, or None",
        lambda h: h.client().wait("task_1", timeout=0),
    ),
    lib(
        "calls",
        "wait-timeout-text",
        "`wait('task_1', timeout='60')`",
        RVE,
        "timeout",
        "Pass e.g. 600, or None",
        lambda h: h.client().wait("task_1", timeout="60"),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "wait-poll-interval",
        "`wait('task_1', poll_interval=0)`",
        RVE,
        "poll_interval",
        "Pass e.g. 5",
        lambda h: h.client().wait("task_1", poll_interval=0),
    ),
    lib(
        "calls",
        "generate-timeout",
        "`generate(prompt='a fox', timeout=0)`",
        RVE,
        "timeout",
        "Pass e.g. 600, or None",
        lambda h: h.client().generate(prompt="a fox", timeout=0),
    ),
    lib(
        "calls",
        "generate-poll-interval",
        "`generate(prompt='a fox', poll_interval=0)`",
        RVE,
        "poll_interval",
        "Pass e.g. 5",
        lambda h: h.client().generate(prompt="a fox", poll_interval=0),
    ),
    lib(
        "calls",
        "download-concurrency",
        "`download(task, 'videos', concurrency=0)`",
        RVE,
        "concurrency",
        "Pass e.g. 4",
        lambda h: h.client().download(h.completed(), h.tmp, concurrency=0),
    ),
    lib(
        "calls",
        "download-concurrency-by-id",
        "`download('task_1', 'videos', concurrency=0)`",
        RVE,
        "concurrency",
        "Pass e.g. 4",
        lambda h: h.client().download("task_1", h.tmp, concurrency=0),
    ),
    lib(
        "calls",
        "download-concurrency-none",
        "`download('task_1', 'videos', concurrency=None)`",
        RVE,
        "concurrency",
        "Pass e.g. 4",
        lambda h: h.client().download("task_1", h.tmp, concurrency=None),  # type: ignore[arg-type]
    ),
    lib(
        "calls",
        "download-directory-is-a-file",
        "`download(task, 'notes.txt')` (a file)",
        DownloadError,
        "cannot write",
        "pick another folder",
        lambda h: h.client().download(h.completed(), h.a_file()),
    ),
]

# Open on every command that takes --base-url: Connection passes the library's message on.
BASE_URL_OPEN = (
    "the message names the Python argument, not the flag: \"base_url: 'ftp://x' must be "
    'an http(s) URL with a host, ..."'
)
INSECURE_OPEN = (
    "the message names base_url, not --base-url, and advises "
    "AsyncClient(allow_insecure_http=True) beside the flag"
)
SIMULATOR_FIELD_OPEN = "the message names the simulator's setting, not the flag: {seen!r}"
BOX = "Try 'grokimagine {command} -h' for help"

CLI_ROWS = [
    # -- what every API command shares
    cli(
        "no-token",
        API_COMMANDS,
        "",
        "GROKIMAGINE_API_KEY",
        "--api-key-file FILE",
        omit=("--api-key-file",),
        shown="no `--api-key-file` and no `GROKIMAGINE_API_KEY`, on generate, batch, status, "
        "download",
    ),
    cli(
        "api-key-file-missing",
        API_COMMANDS,
        "--api-key-file {missing}",
        "--api-key-file",
        "Pass a file holding only the token",
    ),
    cli(
        "api-key-file-empty",
        API_COMMANDS,
        "--api-key-file {empty}",
        "--api-key-file",
        "Put the token in it",
    ),
    cli(
        "base-url",
        API_COMMANDS,
        "--base-url ftp://x",
        "--base-url",
        "such as https://grokimagineapi.com",
    ),
    cli(
        "base-url-plain-http",
        API_COMMANDS,
        "--base-url http://api.example.com",
        "--base-url",
        ("Use https://api.example.com", "--allow-insecure-http"),
    ),
    cli(
        "env-base-url",
        API_COMMANDS,
        "",
        "GROKIMAGINE_BASE_URL",
        "such as https://grokimagineapi.com",
        env={"GROKIMAGINE_BASE_URL": "ftp://x"},
        omit=("--base-url",),
    ),
    cli("tier", API_COMMANDS, "--tier gold", "--tier", "use one of free, pro, enterprise"),
    cli(
        "env-tier",
        API_COMMANDS,
        "",
        "GROKIMAGINE_TIER",
        "set it to one of free, pro, enterprise",
        env={"GROKIMAGINE_TIER": "gold"},
    ),
    cli("rate-limit", API_COMMANDS, "--rate-limit lots", "--rate-limit", "write REQUESTS/PERIOD"),
    cli(
        "rate-limit-zero",
        API_COMMANDS,
        "--rate-limit 0/min",
        "--rate-limit",
        "write at least 1 request",
    ),
    cli(
        "redis-url",
        API_COMMANDS,
        "--redis-url http://cache:6379",
        "--redis-url",
        "write e.g. redis://localhost:6379/0",
    ),
    cli(
        "redis-fallback",
        API_COMMANDS,
        "--redis-fallback 2",
        "--redis-fallback",
        "less than or equal to 1",
    ),
    cli(
        "allow-insecure-http",
        API_COMMANDS,
        "--allow-insecure-http=yes",
        "--allow-insecure-http",
        "does not take a value",
    ),
    cli(
        "env-allow-insecure-http",
        API_COMMANDS,
        "--base-url http://api.example.com",
        "GROKIMAGINE_ALLOW_INSECURE_HTTP",
        "set it to 1",
        env={"GROKIMAGINE_ALLOW_INSECURE_HTTP": "perhaps"},
    ),
    # -- generate
    cli(
        "generate-no-prompt",
        "generate",
        "",
        "Missing argument 'PROMPT'",
        BOX.format(command="generate"),
        first="",
        shown="`grokimagine generate` (no PROMPT)",
    ),
    cli("generate-prompt", "generate", "", "PROMPT", "Describe the video", first="''"),
    cli("generate-mode", "generate", "--mode wild", "--mode", "--allow-undocumented"),
    cli("generate-ratio", "generate", "--ratio 16:9", "--ratio", "--allow-undocumented"),
    cli(
        "generate-image",
        "generate",
        "--image ftp://x/a.png",
        "--image",
        "Upload the image somewhere the API can fetch it",
    ),
    cli(
        "generate-out",
        "generate",
        "--out {file}",
        "--out",
        "not a folder",
    ),
    cli(
        "generate-timeout",
        "generate",
        "--timeout 0",
        "--timeout",
        "greater than or equal to 0.001",
    ),
    cli("generate-timeout-text", "generate", "--timeout soon", "--timeout", "a valid number"),
    cli(
        "generate-poll-interval",
        "generate",
        "--poll-interval 0",
        "--poll-interval",
        "greater than or equal to 0.01",
    ),
    cli(
        "generate-allow-undocumented",
        "generate",
        "--allow-undocumented=yes",
        "--allow-undocumented",
        "does not take a value",
    ),
    # -- batch
    cli("batch-out", "batch", "--out {file}", "--out", "not a folder"),
    cli(
        "batch-journal-folder",
        "batch",
        "--journal {dir}",
        "--journal",
        "name a file",
    ),
    cli("batch-journal-in-a-file", "batch", "--journal {file}/j.db", "--journal", "not a folder"),
    cli(
        "batch-journal-and-no-journal",
        "batch",
        "--journal j.db --no-journal",
        "--journal or --no-journal",
        "not both",
    ),
    cli(
        "batch-no-journal",
        "batch",
        "--no-journal=yes",
        "--no-journal",
        "does not take a value",
    ),
    cli("batch-report", "batch", "--report {dir}", "--report", "name a file"),
    cli(
        "batch-max-credits",
        "batch",
        "--max-credits -1",
        "--max-credits",
        "greater than or equal to 0",
    ),
    cli("batch-dry-run", "batch", "--dry-run=yes", "--dry-run", "does not take a value"),
    cli("batch-yes", "batch", "--yes=no", "--yes", "does not take a value"),
    cli(
        "batch-confirm-over",
        "batch",
        "--confirm-over -1",
        "--confirm-over",
        "greater than or equal to 0",
    ),
    cli(
        "batch-over-confirm-over",
        "batch",
        "--confirm-over 0",
        "--confirm-over 0",
        "pass --yes to go ahead",
        shown="`grokimagine batch prompts.txt --confirm-over 0` off a terminal, no `--yes`",
    ),
    cli(
        "batch-resubmit-uncertain",
        "batch",
        "--resubmit-uncertain=yes",
        "--resubmit-uncertain",
        "does not take a value",
    ),
    cli(
        "batch-retry-failed-no-journal",
        "batch",
        "--retry-failed --no-journal",
        "--retry-failed",
        "drop --no-journal",
    ),
    cli(
        "batch-retry-failed",
        "batch",
        "--retry-failed=yes",
        "--retry-failed",
        "does not take a value",
    ),
    cli(
        "batch-max-prompt-chars",
        "batch",
        "--max-prompt-chars 0",
        "--max-prompt-chars",
        "greater than or equal to 1",
    ),
    cli("batch-timeout", "batch", "--timeout 0", "--timeout", "greater than or equal to 0.001"),
    cli(
        "batch-poll-interval",
        "batch",
        "--poll-interval 0",
        "--poll-interval",
        "greater than or equal to 0.01",
    ),
    cli(
        "batch-progress",
        "batch",
        "--progress loud",
        "--progress",
        "is not one of 'auto', 'live', 'plain'",
    ),
    cli(
        "batch-allow-undocumented",
        "batch",
        "--allow-undocumented=yes",
        "--allow-undocumented",
        "does not take a value",
    ),
    # -- status and download
    cli(
        "status-no-task-id",
        "status",
        "",
        "Missing argument 'TASK_ID'",
        BOX.format(command="status"),
        first="",
        shown="`grokimagine status` (no TASK_ID)",
    ),
    cli(
        "status-task-id",
        "status",
        "",
        "TASK_ID",
        "the id generate or batch printed",
        first="''",
    ),
    cli("status-json", "status", "--json=yes", "--json", "does not take a value"),
    cli(
        "download-no-task-id",
        "download",
        "",
        "Missing argument 'TASK_ID'",
        BOX.format(command="download"),
        first="",
        shown="`grokimagine download` (no TASK_ID)",
    ),
    cli(
        "download-task-id",
        "download",
        "",
        "TASK_ID",
        "the id generate or batch printed",
        first="''",
    ),
    cli(
        "download-out",
        "download",
        "--out {file}",
        "--out",
        "not a folder",
    ),
    # -- simulate (its options are argparse's; nothing is served when one is bad)
    cli(
        "simulate-host",
        "simulate",
        "--host no-such-host.invalid",
        "--host",
        "pass 127.0.0.1",
    ),
    cli("simulate-port", "simulate", "--port abc", "--port", "invalid int value"),
    cli(
        "simulate-port-range",
        "simulate",
        "--port 70000",
        "--port",
        "0 to 65535",
    ),
    cli("simulate-tier", "simulate", "--tier gold", "--tier", "choose from"),
    cli(
        "simulate-limit",
        "simulate",
        "--limit 0",
        "--limit",
        "at least 1",
    ),
    cli(
        "simulate-period",
        "simulate",
        "--period 0",
        "--period",
        "a positive number of seconds",
    ),
    cli("simulate-rate-model", "simulate", "--rate-model wobbly", "--rate-model", "choose from"),
    cli("simulate-burst", "simulate", "--burst 5", "--burst", "needs --rate-model leaky"),
    cli(
        "simulate-burst-zero",
        "simulate",
        "--rate-model leaky --burst 0",
        "--burst",
        ">= 1",
    ),
    cli("simulate-reset-format", "simulate", "--reset-format hours", "--reset-format", "choose"),
    cli("simulate-retry-after", "simulate", "--retry-after soon", "--retry-after", "choose from"),
    cli(
        "simulate-no-rate-headers",
        "simulate",
        "--no-rate-headers=yes",
        "--no-rate-headers",
        "ignored explicit argument",
    ),
    cli(
        "simulate-count-rejected",
        "simulate",
        "--count-rejected=yes",
        "--count-rejected",
        "ignored explicit argument",
    ),
    cli(
        "simulate-generation-time-count",
        "simulate",
        "--generation-time 5",
        "--generation-time",
        "expected 2 arguments",
    ),
    cli(
        "simulate-generation-time",
        "simulate",
        "--generation-time 5 1",
        "--generation-time",
        "min <= max",
    ),
    cli(
        "simulate-failure-rate",
        "simulate",
        "--failure-rate 2",
        "--failure-rate",
        "within 0..1",
    ),
    cli(
        "simulate-background-share",
        "simulate",
        "--background-share 2",
        "--background-share",
        "within 0..1",
    ),
    cli(
        "simulate-video-ttl",
        "simulate",
        "--video-ttl -1",
        "--video-ttl",
        "must not be negative",
    ),
    cli(
        "simulate-api-key",
        "simulate",
        "--api-key ''",
        "--api-key",
        "the token clients will send",
    ),
    cli(
        "simulate-errors-as-http-200",
        "simulate",
        "--errors-as-http-200=yes",
        "--errors-as-http-200",
        "ignored explicit argument",
    ),
    cli("simulate-seed", "simulate", "--seed abc", "--seed", "invalid int value"),
    # -- demo
    cli(
        "demo-out",
        "demo",
        "--out {file}",
        "--out",
        "not a folder",
    ),
    cli(
        "demo-progress",
        "demo",
        "--progress loud",
        "--progress",
        "is not one of 'auto', 'live', 'plain'",
    ),
]

FILE_ROWS = [
    batch_file(
        "jsonl-not-json",
        "p.jsonl",
        '{"prompt": "a fox",\n',
        "line 1: not JSON",
        "one object a line",
    ),
    batch_file(
        "jsonl-list", "p.jsonl", '["a fox"]\n', "line 1: a JSON list", 'write {"prompt": "..."'
    ),
    batch_file(
        "jsonl-null",
        "p.jsonl",
        "null\n",
        "line 1: a JSON null",
        'write {"prompt": "..."',
    ),
    batch_file(
        "jsonl-unknown-field",
        "p.jsonl",
        '{"prompt": "a fox", "size": 3}\n',
        "line 1: size",
        "Use only prompt, mode, ratio, images",
    ),
    batch_file(
        "jsonl-prompt-type",
        "p.jsonl",
        '{"prompt": 42}\n',
        "line 1: prompt",
        "as a string",
    ),
    batch_file(
        "jsonl-ratio-type",
        "p.jsonl",
        '{"prompt": "a fox", "ratio": 16}\n',
        "line 1: ratio",
        "Pass one of 1:1, 2:3, 3:2",
    ),
    batch_file(
        "jsonl-no-prompt",
        "p.jsonl",
        '{"mode": "fun"}\n',
        "line 1: prompt: is required",
        "Give every request a prompt",
    ),
    batch_file(
        "jsonl-empty-prompt",
        "p.jsonl",
        '{"prompt": ""}\n',
        "line 1: prompt: is empty",
        "Describe the video",
    ),
    batch_file(
        "jsonl-mode",
        "p.jsonl",
        '{"prompt": "a fox", "mode": "wild"}\n',
        "line 1: mode",
        "pass --allow-undocumented",
    ),
    batch_file(
        "jsonl-images-not-http",
        "p.jsonl",
        '{"prompt": "a fox", "images": ["ftp://x/a.png"]}\n',
        "line 1: images",
        "Upload the image somewhere the API can fetch it",
    ),
    batch_file(
        "jsonl-images-not-a-list",
        "p.jsonl",
        '{"prompt": "a fox", "images": 5}\n',
        "line 1: images",
        "as a JSON list",
    ),
    batch_file(
        "csv-open-quote",
        "p.csv",
        'prompt,ratio\n"a fox,3:2\n',
        "line 2: not CSV",
        "a quote left open",
    ),
    batch_file(
        "csv-unknown-column",
        "p.csv",
        "prompt,colour\na fox,red\n",
        "line 1: unknown column(s) colour",
        "among: prompt, mode, ratio, images",
    ),
    batch_file(
        "csv-no-prompt-column",
        "p.csv",
        "mode,ratio\nfun,1:1\n",
        "line 1",
        "(prompt is required)",
    ),
    batch_file(
        "csv-more-cells",
        "p.csv",
        "prompt,ratio\na fox,1:1,extra\n",
        "line 2: more cells than the header has columns",
        "quote a cell that holds commas",
    ),
    batch_file(
        "csv-empty-prompt",
        "p.csv",
        "prompt,ratio\n,1:1\n",
        "line 2: prompt: is required",
        "Give every request a prompt",
    ),
    batch_file(
        "csv-ratio",
        "p.csv",
        "prompt,ratio\na fox,16:9\n",
        "line 2: ratio",
        "pass --allow-undocumented",
    ),
    batch_file(
        "csv-images-not-http",
        "p.csv",
        "prompt,images\na fox,ftp://x/a.png\n",
        "line 2: images",
        "Upload the image somewhere the API can fetch it",
    ),
    batch_file(
        "csv-empty",
        "p.csv",
        "",
        "header row",
        "must name the columns",
    ),
    batch_file(
        "csv-header-only",
        "p.csv",
        "prompt\n",
        "holds no requests",
        "write one prompt a line",
    ),
    batch_file(
        "text-empty",
        "p.txt",
        "",
        "holds no requests",
        "write one prompt a line",
    ),
    batch_file(
        "text-only-comments",
        "p.txt",
        "# to do\n",
        "holds no requests",
        "write one prompt a line",
    ),
    batch_file(
        "text-too-long",
        "p.txt",
        "a fox\n" + "x" * 10_001 + "\n",
        "line 2: prompt: 10,001 characters",
        "pass --max-prompt-chars",
        shown="`p.txt` whose line 2 holds 10,001 characters",
    ),
    batch_file(
        "text-not-utf8",
        "p.txt",
        "a fox\ncaf\u00e9 au lait\n".encode("latin-1"),
        "line 2",
        "save the file as UTF-8",
        shown="`p.txt` saved as Latin-1: `a fox` ⏎ `café au lait`",
    ),
    batch_file(
        "file-missing",
        "missing.txt",
        "",
        "missing.txt",
        "check the path",
        shown="`grokimagine batch missing.txt` (no such file)",
    ),
]

ROWS: list[Row] = [*REQUEST_ROWS, *CLIENT_ROWS, *ENV_ROWS, *CALL_ROWS, *CLI_ROWS, *FILE_ROWS]
LIBRARY_KINDS = ("request", "client", "env", "calls")


def _params(kinds: tuple[str, ...]) -> list[Any]:
    return [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS if r.kind in kinds]


def _cli_params() -> list[Any]:
    """A test a command of each row: one for each command that shares the flag."""
    return [
        pytest.param(
            r, command, id=f"{r.id}-{command}" if len(r.commands) > 1 else r.id, marks=r.marks
        )
        for r in ROWS
        if r.kind == "cli"
        for command in r.commands
    ]


def _no_secret(message: str, secret: str) -> None:
    assert secret not in message
    for piece in secret.split():
        if len(piece) >= 6:
            assert piece not in message


# -- the library --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("row", _params(LIBRARY_KINDS))
async def test_the_library_refuses_it_before_sending(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    for name, value in row.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert row.call is not None
    async with Harness(tmp_path) as h:
        with anyio.fail_after(5), pytest.raises(row.raises) as info:
            await h.run(row.call)
        sent = [f"{r.method} {r.url}" for r in h.requests]
    message = str(info.value)
    assert sent == [], message
    assert row.field in message, message
    for words in row.fix:
        assert words in message, message
    _no_secret(message, row.secret)
    _no_secret(repr(info.value), row.secret)


# -- the command line ---------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    sim: Simulator
    url: str


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    """The simulator on loopback, shared by the command-line rows: each counts its own."""
    simulator = Simulator(limit=200, period=1.0, generation_time=(0.05, 0.1), seed=3)
    with simulator.serve_in_thread() as url:
        yield Api(simulator, url)


@dataclass
class Invoked:
    exit_code: int
    text: str
    sent: int
    served: bool


def said(output: str) -> str:
    """Everything a command printed, on one line: rich wraps and boxes usage errors."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", output).split())


def invoke(
    argv: list[str],
    api: Api,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: Mapping[str, str | None] = {},
    *,
    omit: tuple[str, ...] = (),
) -> Invoked:
    """Run ``grokimagine`` on ``argv`` (placeholders filled in) against ``api``."""
    monkeypatch.delenv("GROKIMAGINE_ALLOW_INSECURE_HTTP", raising=False)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    served: list[object] = []
    monkeypatch.setattr(Simulator, "run", lambda self, *a, **k: served.append(a))
    key = tmp_path / "key"
    key.write_text(TOKEN + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox in the snow\n")
    (tmp_path / "notes.txt").write_text("not a folder\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "somewhere").mkdir()
    paths = {
        "{prompts}": prompts,
        "{file}": tmp_path / "notes.txt",
        "{dir}": tmp_path / "somewhere",
        "{missing}": tmp_path / "missing.txt",
        "{empty}": tmp_path / "empty.txt",
    }
    args: list[str] = []
    for arg in argv:
        for placeholder, path in paths.items():
            arg = arg.replace(placeholder, str(path))
        args.append(arg)
    command = args[0]
    extra: list[str] = []
    defaults: dict[str, list[str]] = {}
    if command in API_COMMANDS:
        defaults["--api-key-file"] = [str(key)]
        defaults["--base-url"] = [api.url]
        defaults["--rate-limit"] = ["200/1s"]
    if command in ("generate", "batch"):
        defaults["--poll-interval"] = ["0.02"]
    if command in ("generate", "batch", "download", "demo"):
        defaults["--out"] = [str(tmp_path / "v")]
    if command == "demo":
        defaults["--time-scale"] = ["0.02"]
    for flag, default in defaults.items():
        if flag not in args and flag not in omit:
            extra += [flag, *default]
    before = api.sim.stats.requests
    # The command _app builds from the app once: typer's runner would build it each time.
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: grokimagine)
    result = typer.testing.CliRunner().invoke(app, args + extra)
    text = said(result.output)
    sent = api.sim.stats.requests - before
    demo = re.search(r"the simulator saw (\d+) requests", text)
    if demo:
        sent += int(demo.group(1))
    assert TOKEN not in result.output
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        text += f" [raised {type(result.exception).__name__}: {result.exception}]"
    return Invoked(result.exit_code, text, sent, bool(served))


#: Advice a command-line user cannot act on, and Python's words for things (test_cli's
#: list, and more).
PYTHONISH = re.compile(
    r"Unchecked|RateLimit\(|AsyncClient\(|rate_limit[=.]|\w+=\.\.\.|Value error|NoneType"
    r"|submit\(\)|Traceback|codec can't"
)


@pytest.mark.parametrize(("row", "command"), _cli_params())
def test_the_command_line_refuses_it_before_sending(
    row: Row, command: str, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = FIRST_ARGS[command] if row.first is None else row.first
    argv = [command, *own, *row.argv]
    got = invoke(argv, api, tmp_path, monkeypatch, row.env, omit=row.omit)
    assert (got.exit_code, got.sent, got.served) == (row.exit, 0, False), got.text
    assert row.field in got.text, got.text
    for words in row.fix:
        assert words in got.text, got.text
    assert not PYTHONISH.search(got.text), got.text
    # A command that fails before it sends anything leaves no output folder behind.
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("row", _params(("file",)))
def test_a_bad_batch_file_is_refused_before_sending(
    row: Row, api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / row.file
    if row.id != "file-missing":
        if isinstance(row.content, bytes):
            path.write_bytes(row.content)
        else:
            path.write_text(row.content, encoding="utf-8")
    got = invoke(["batch", str(path)], api, tmp_path, monkeypatch)
    assert (got.exit_code, got.sent) == (2, 0), got.text
    assert "nothing was sent" in got.text, got.text
    assert row.field in got.text, got.text
    for words in row.fix:
        assert words in got.text, got.text
    assert not PYTHONISH.search(got.text), got.text
    assert not (tmp_path / "v").exists()


# -- the page -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    assert "|" not in text, f"a table cell cannot hold a pipe: {text!r}"
    return text


def _code(words: str) -> str:
    tick = "``" if "`" in words else "`"
    pad = " " if words.startswith("`") or words.endswith("`") else ""
    return f"{tick}{pad}{words}{pad}{tick}"


def render_table() -> str:
    """The page's table: a section a kind, a line a row, open rows marked."""
    out: list[str] = []
    for kind, title in SECTIONS.items():
        rows = [r for r in ROWS if r.kind == kind]
        out += [f"### {title}", "", "| Input | Error | The message names |", "|---|---|---|"]
        for row in rows:
            error = row.error
            if row.open:
                error += f" **open**: today {row.open}"
            named = ", ".join(_code(w) for w in (row.field, *row.fix))
            out.append(f"| {_cell(row.shown)} | {_cell(error)} | {_cell(named)} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _page_table(page: str) -> str:
    start, end = page.index(START) + len(START), page.index(END)
    return page[start:end].strip("\n") + "\n"


def write_page() -> None:
    page = PAGE.read_text(encoding="utf-8")
    start, end = page.index(START) + len(START), page.index(END)
    PAGE.write_text(page[:start] + "\n\n" + render_table() + "\n" + page[end:], encoding="utf-8")


def test_the_page_shows_the_table() -> None:
    assert _page_table(PAGE.read_text(encoding="utf-8")) == render_table(), (
        "docs/reference/bad-input.md is out of step with ROWS: "
        "run `.venv/bin/python -m tests.test_bad_input` to rewrite its table"
    )


def test_every_flag_of_every_command_has_a_row() -> None:
    """A flag added to a command fails here until it has a row of its own."""
    from grokimagine_async._cli._app import cli as click_group
    from grokimagine_async.simulator.__main__ import build_parser

    flags: dict[str, set[str]] = {}
    for name, command in click_group.commands.items():  # type: ignore[attr-defined]
        flags[name] = {
            opt
            for param in command.params
            if not getattr(param, "hidden", False)
            for opt in param.opts
            if opt.startswith("--") and opt != "--help"
        }
    flags["simulate"] = {
        opt
        for action in build_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }
    covered: dict[str, set[str]] = {name: set() for name in flags}
    for row in ROWS:
        for command in row.commands:
            covered[command] |= {a.split("=")[0] for a in row.argv if a.startswith("--")}
    missing = {name: sorted(flags[name] - covered[name]) for name in flags}
    assert missing == {name: [] for name in flags}


def test_every_client_option_and_variable_has_a_row() -> None:
    """An option or variable added to the client fails here until it has a row."""
    from grokimagine_async import _config

    names = set(inspect.signature(AsyncClient).parameters)
    names |= {v for k, v in vars(_config).items() if k.startswith("ENV_")}
    named = " ".join(f"{r.shown} {r.field}" for r in ROWS if r.kind in ("client", "env"))
    assert sorted(n for n in names if n not in named) == []


if __name__ == "__main__":
    write_page()
    sys.exit(0)
