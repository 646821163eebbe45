"""The exception tree.

Catch at the level you care about::

    GrokImagineError
    ├── ConfigurationError            bad client settings (no token, bad tier, ...)
    ├── RequestValidationError        a request rejected before anything was sent
    ├── APIError                      something went wrong talking to the API
    │   ├── APIConnectionError        the request did not get an answer
    │   │   └── APITimeoutError
    │   ├── MalformedResponseError    an answer that is not the documented JSON
    │   ├── APIStatusError            the API answered with an error code
    │   │   ├── BadRequestError           400
    │   │   ├── AuthenticationError       401
    │   │   ├── NotFoundError             404
    │   │   ├── RateLimitError            429
    │   │   └── ServerError               5xx
    │   └── SubmitUncertainError      a paid submission may or may not have created a task
    ├── ClientClosedError         the client was used after aclose()
    └── TaskError                     every one carries the task_id
        ├── TaskFailedError           the task ended in failure (carries the task)
        ├── TaskTimeoutError          the task was not done by the deadline
        └── TaskPollError             polling the task hit an error that waiting won't cure

No exception message, ``repr`` or attribute carries the API token.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import GenerateRequest, Task, TaskState

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientClosedError",
    "ConfigurationError",
    "DownloadError",
    "GrokImagineError",
    "InputFileError",
    "JournalError",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitError",
    "RateLimiterUnavailableError",
    "RequestValidationError",
    "ServerError",
    "SubmitUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskPollError",
    "TaskTimeoutError",
    "VideoExpiredError",
    "WatchTimeoutError",
]


class GrokImagineError(Exception):
    """Base class of every error this library raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword arguments, which default pickling can't replay;
        # rebuild from the attributes instead, so errors cross process pools intact.
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(
    cls: type[GrokImagineError], args: tuple[Any, ...], state: dict[str, Any]
) -> GrokImagineError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ClientClosedError(GrokImagineError, RuntimeError):
    """The client was used after ``aclose()`` (or after its ``async with`` block)."""


class ConfigurationError(GrokImagineError, ValueError):
    """The client was set up wrongly: no token, an unknown tier, a bad URL."""


class RateLimiterUnavailableError(GrokImagineError, ConnectionError):
    """The shared rate limiter's Redis could not be reached, so the request was not
    sent. Set ``redis_fallback`` to keep going on a share of the plan meanwhile."""


class RequestValidationError(GrokImagineError, ValueError):
    """A request was refused before it was sent, so nothing was spent.

    ``field`` names the offending field (``"prompt"``, ``"mode"``, ...) and
    ``fix`` says what to do about it.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        #: The offending field (``"prompt"``, ``"mode"``, a CLI flag, ...).
        self.field = field
        #: What is wrong with it.
        self.problem = problem
        #: What to do about it.
        self.fix = fix
        super().__init__(f"{field}: {problem}. {fix}")


class APIError(GrokImagineError):
    """Something went wrong while talking to the API.

    ``method`` and ``url`` name the request (the URL never holds the token).
    """

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        #: The message, as ``str(error)``.
        self.message = message
        #: The request's method.
        self.method = method
        #: The request's URL (it never holds the token).
        self.url = url


class APIConnectionError(APIError):
    """No usable answer arrived: DNS, refused or dropped connection, broken stream.

    ``request_sent`` is False only when the connection was provably never
    made, so the server cannot have seen the request.
    """

    def __init__(
        self, message: str, *, method: str = "", url: str = "", request_sent: bool = True
    ) -> None:
        super().__init__(message, method=method, url=url)
        #: False only when the connection was provably never made.
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """The request timed out (connecting, waiting for a pool slot, or reading)."""


class MalformedResponseError(APIError):
    """The answer was not the documented JSON: HTML from a proxy, an empty or
    truncated body, or JSON of the wrong shape.

    ``status_code`` is the HTTP status and ``excerpt`` the first characters of
    the body, for the log.
    """

    def __init__(
        self, message: str, *, status_code: int, excerpt: str, method: str = "", url: str = ""
    ) -> None:
        super().__init__(message, method=method, url=url)
        #: The HTTP status of the answer (0 when its body could not be decoded).
        self.status_code = status_code
        #: The first characters of the body, for the log.
        self.excerpt = excerpt


class APIStatusError(APIError):
    """The API answered with an error, in the HTTP status or in the body's ``code``.

    ``status_code`` is the effective code (the body's ``code`` when an HTTP 200
    carried an error), ``http_status`` the HTTP status line's, and ``code``,
    ``error`` and ``api_message`` the body's fields when it had them (else
    None). ``excerpt`` is the start of the body, for bodies that were not the
    documented JSON (a proxy's HTML page, say).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        http_status: int | None = None,
        code: int | None = None,
        error: str | None = None,
        api_message: str | None = None,
        retry_after: float | None = None,
        excerpt: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message, method=method, url=url)
        #: The effective code: the body's ``code`` when an HTTP 200 carried an error.
        self.status_code = status_code
        #: The HTTP status line's code.
        self.http_status = status_code if http_status is None else http_status
        #: The body's ``code``, if it had one.
        self.code = code
        #: The body's ``error`` name (``"INVALID_REQUEST"``, ...), if it had one.
        self.error = error
        #: The body's ``message``, if it had one.
        self.api_message = api_message
        #: Seconds the server asked to wait before trying again, if it said.
        self.retry_after = retry_after
        #: The start of a body that was not the documented JSON (a proxy's page, say).
        self.excerpt = excerpt


class BadRequestError(APIStatusError):
    """400: the API refused the request as invalid. Sending it again won't help."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, wrong or revoked."""


class NotFoundError(APIStatusError):
    """404: no such task (or endpoint)."""


class RateLimitError(APIStatusError):
    """429: too many requests for the token's plan.

    ``retry_after`` is how many seconds the server asked us to wait, if it said.
    """


class ServerError(APIStatusError):
    """5xx: the API or a proxy in front of it failed."""


class SubmitUncertainError(APIError):
    """A submission failed after it may have reached the server.

    The task may exist, and be paid for, without the client knowing its id.
    The client does not resend such a request unless told to
    (``AsyncClient(retry_uncertain_submits=True)``). ``request`` is what was
    sent; ``__cause__`` is the underlying error.
    """

    def __init__(self, message: str, *, request: GenerateRequest, cause: Exception) -> None:
        super().__init__(message, method="POST")
        #: The request that was sent.
        self.request = request
        #: What went wrong (also ``__cause__``).
        self.cause = cause


class TaskError(GrokImagineError):
    """A task did not end in success, or could not be followed to its end.

    ``task_id`` is always there: the task may still be paid for and running.
    """

    task_id: str


class TaskFailedError(TaskError):
    """The task ended in failure. ``task`` holds it, with ``failure_kind``
    and ``error_message``."""

    def __init__(self, task: Task) -> None:
        #: The failed task: ``failure_kind``, ``error_message``, ``resubmit_may_succeed``.
        self.task = task
        #: Its id.
        self.task_id = task.task_id
        kind = task.failure_kind.value if task.failure_kind is not None else "unknown"
        hint = (
            "a new submission may succeed"
            if task.resubmit_may_succeed
            else "resubmitting it unchanged will fail again"
        )
        said = repr(task.error_message or task.raw_status)
        super().__init__(f"task {task.task_id} failed ({kind}): {said}; {hint}")


class TaskTimeoutError(TaskError, TimeoutError):
    """The deadline passed before the task finished. The task goes on on the
    server: ``task_id`` lets you look it up later; ``last_task`` (may be None)
    is the last state seen."""

    def __init__(self, task_id: str, timeout: float, last_task: Task | None) -> None:
        #: The task's id, to look it up later.
        self.task_id = task_id
        #: The deadline, in seconds.
        self.timeout = timeout
        #: The last state seen (None if none was).
        self.last_task = last_task
        state: TaskState | str = last_task.state if last_task is not None else "unknown"
        super().__init__(
            f"task {task_id} was not finished after {timeout:g}s (last state: {state}); "
            "it may still complete: look it up again with get_task()"
        )


def _excerpt(text: str | bytes, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP (or body) status code."""
    if status in STATUS_CLASSES:
        return STATUS_CLASSES[status]
    if 500 <= status <= 599:
        return ServerError
    return APIStatusError


class TaskPollError(TaskError):
    """Polling a task failed in a way that waiting longer won't cure (a revoked
    token, say). ``task_id`` and ``last_task`` (may be None) say where it
    stood; ``__cause__`` is the error."""

    def __init__(self, task_id: str, cause: Exception, last_task: Task | None) -> None:
        #: The task's id: it may still be running, and paid for.
        self.task_id = task_id
        #: The error that ended the polling (also ``__cause__`` where raised from it).
        self.cause = cause
        #: The last state seen (None if none was).
        self.last_task = last_task
        super().__init__(f"could not follow task {task_id}: {cause}")


class BudgetExceededError(GrokImagineError):
    """Not submitted: it would have taken the batch's spend past ``max_credits``."""


class WatchTimeoutError(GrokImagineError, TimeoutError):
    """The watch's deadline passed with tasks unfinished. None is lost:
    ``unfinished`` maps each of their ids to the last state seen (None if
    never seen). They go on on the server; watch them again to follow them."""

    def __init__(self, unfinished: dict[str, Task | None], timeout: float) -> None:
        #: Every task id not yet yielded, with the last state seen (None if never seen).
        self.unfinished = unfinished
        #: The watch's timeout, in seconds.
        self.timeout = timeout
        super().__init__(
            f"{len(unfinished)} task(s) unfinished after {timeout:g}s; they go on on the "
            "server: watch their ids again (WatchTimeoutError.unfinished)"
        )


class JournalError(GrokImagineError):
    """The batch's journal could not be read or written (a locked, full or
    foreign file). The batch itself is not lost: see the message."""


class DownloadError(GrokImagineError):
    """A video could not be downloaded whole. ``url`` names it (video URLs
    carry no API token). When several videos of a task failed, ``errors``
    holds each failure and ``downloaded`` the files that were written."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        errors: Sequence[DownloadError] = (),
        downloaded: Sequence[Path] = (),
    ) -> None:
        super().__init__(message)
        #: The video's URL (the first failed one's, for several); never carries the token.
        self.url = url
        #: Each video's own failure, when more than one failed (else empty).
        self.errors = list(errors)
        #: The files written whole before the failures were reported.
        self.downloaded = list(downloaded)


class VideoExpiredError(DownloadError):
    """The video's link has expired (they last hours to days)."""


#: Problems an :class:`InputFileError` lists in full before the rest are only counted.
SHOWN_PROBLEMS = 20


class InputFileError(GrokImagineError, ValueError):
    """A batch file cannot be used as it is; ``problems`` says where and why.
    Raised before anything is sent."""

    def __init__(self, path: str, problems: list[str]) -> None:
        #: The file, as given.
        self.path = path
        #: One line a problem: the line number, the field and the fix.
        self.problems = problems
        shown = problems[:SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [f"{path}: {len(problems)} problem(s); nothing was sent:", *shown]
        if more:
            lines.append(f"... and {more} more")
        super().__init__("\n".join(lines))


#: A task just created may not be visible to status calls yet: a 404 this many
#: seconds after submission is taken as "not there yet", not "no such task".
NOT_FOUND_GRACE = 30.0


def poll_error_is_final(error: Exception, task_age: float) -> bool:
    """Whether a failed status call means that polling the task again is pointless.

    Passing trouble (connection errors, timeouts, 5xx, 429, a garbled answer)
    is not final, nor is a 404 within :data:`NOT_FOUND_GRACE` seconds of the
    submission; any other API error (a revoked token, a 404 after that) is.
    ``task_age`` is the seconds since the task was submitted (or since the
    caller first asked about it).
    """
    if isinstance(error, (APIConnectionError, MalformedResponseError, ServerError, RateLimitError)):
        return False
    if isinstance(error, NotFoundError):
        return task_age > NOT_FOUND_GRACE
    return True


def never_sent(error: BaseException | None) -> bool:
    """Whether a request provably never reached the server: no connection was made,
    or the shared rate limiter could not be asked, so nothing was spent."""
    if isinstance(error, RateLimiterUnavailableError):
        return True
    return isinstance(error, APIConnectionError) and not error.request_sent


class Creation(enum.Enum):
    """What a submission that failed may have left on the server: the one answer
    to "did it reach the server, and did it create a task?" that every layer asks."""

    #: It never left, or a 429 turned it away: nothing was taken; sending it again is free.
    NOTHING = "nothing"
    #: The server answered no (a 3xx or 4xx but 408 and 429): nothing was created, and
    #: sending it again would be refused again.
    REFUSED = "refused"
    #: It may have created a task (and spent credits): a connection lost after
    #: sending, a 5xx or 408, an answer that could not be read.
    MAYBE = "maybe"


def creation(error: BaseException) -> Creation:
    """What a submission that ended in ``error`` may have created (see :class:`Creation`)."""
    if never_sent(error) or isinstance(error, RateLimitError):
        return Creation.NOTHING
    if isinstance(error, APIStatusError) and error.status_code < 500 and error.status_code != 408:
        return Creation.REFUSED
    if isinstance(error, APIError):
        return Creation.MAYBE
    # Not the API's answer at all (a bad input caught first, a closed client): unsent.
    return Creation.NOTHING
