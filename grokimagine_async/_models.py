"""Typed requests and tasks.

The provider's page documents little about a task's life, so :class:`Task`
keeps the server's ``status`` word as ``raw_status`` and derives a normalised :class:`TaskState`
from it, case-insensitively, from the words seen on providers of the same
model. A word nobody has seen yet counts as still running: the caller's
deadline, not a guess, decides when to give up on it.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import deprecated

from ._exceptions import RequestValidationError

__all__ = [
    "DOCUMENTED_MODES",
    "DOCUMENTED_RATIOS",
    "FailureKind",
    "GenerateRequest",
    "Task",
    "TaskState",
    "Unchecked",
    "check_task_id",
]

#: The ``mode`` values the provider documents; send another as :class:`Unchecked`.
DOCUMENTED_MODES: tuple[str, ...] = ("fun", "normal", "spicy")
#: The ``ratio`` values the provider documents; send another as :class:`Unchecked`.
DOCUMENTED_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2")


class Unchecked(str):
    """A ``mode`` or ``ratio`` value to send as it is.

    The client refuses values the provider has not documented, so a typo
    costs nothing. When the provider adds a value (other providers of the
    model take ratios such as ``16:9``), wrap it to send it anyway::

        await client.submit(prompt="...", ratio=Unchecked("16:9"))
    """

    __slots__ = ()


def _invalid(problem: str, fix: str) -> PydanticCustomError:
    """A validation error that keeps what is wrong and what to do apart."""
    return PydanticCustomError(
        "grokimagine_invalid", "{problem}. {fix}", {"problem": problem, "fix": fix}
    )


def _check_choice(field: str, value: object, documented: tuple[str, ...]) -> str:
    if isinstance(value, Unchecked):
        if not value.strip():
            raise _invalid("is empty", f"Pass one of {', '.join(documented)}")
        return value
    if not isinstance(value, str):
        raise _invalid(f"must be text, got {value!r}", f"Pass one of {', '.join(documented)}")
    normalised = value.strip().lower()
    if not normalised:
        raise _invalid("is empty", f"Pass one of {', '.join(documented)}, or leave it out")
    if normalised not in documented:
        raise _invalid(
            f"{value!r} is not a documented {field} (documented: {', '.join(documented)})",
            f"Fix the spelling, or if the provider has added it, pass "
            f"{field}=Unchecked({value!r}) to send it unchecked",
        )
    return normalised


class GenerateRequest(BaseModel):
    """One video to generate: the body of ``POST /v1/generate``.

    Checked when it is built, before anything is sent or spent:
    ``prompt`` must have text; ``mode`` and ``ratio`` must be documented values
    (see :class:`Unchecked` for new ones); ``images`` is a list of http(s) URLs
    (a single URL is accepted and wrapped).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    #: What to generate; required, also with images.
    prompt: str
    #: ``fun``, ``normal`` or ``spicy``; other providers of the model default to ``normal``.
    mode: str = "normal"
    #: ``1:1``, ``2:3`` or ``3:2``.
    ratio: str = "1:1"
    #: URLs of reference images; left out of the body when empty.
    images: tuple[str, ...] = ()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _as_request_error(exc) from None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: object) -> object:
        if not isinstance(value, str):
            raise _invalid(
                f"must be text, got {type(value).__name__}", "Pass the prompt as a string"
            )
        if not value.strip():
            raise _invalid("is empty", "Describe the video to generate")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _check_mode(cls, value: object) -> str:
        return _check_choice("mode", value, DOCUMENTED_MODES)

    @field_validator("ratio", mode="before")
    @classmethod
    def _check_ratio(cls, value: object) -> str:
        return _check_choice("ratio", value, DOCUMENTED_RATIOS)

    @field_validator("images", mode="before")
    @classmethod
    def _check_images(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _invalid(
                f"must be a list of image URLs, got {type(value).__name__}",
                "Pass images=['https://.../image.png']",
            )
        urls: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _HTTP_URL.match(item.strip()):
                raise _invalid(
                    f"images[{i}] = {item!r} is not an http(s) URL",
                    "Upload the image somewhere the API can fetch it and pass that URL",
                )
            urls.append(item.strip())
        return tuple(urls)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body sent to the API."""
        body: dict[str, Any] = {"mode": self.mode, "prompt": self.prompt, "ratio": self.ratio}
        if self.images:
            body["images"] = list(self.images)
        return body

    @classmethod
    def build(
        cls, request: GenerateRequest | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> GenerateRequest:
        """A request from a model, a mapping, or keyword fields (those set
        override the mapping's), raising :class:`RequestValidationError`
        that names the field and the fix."""
        if isinstance(request, GenerateRequest) and not fields:
            return request
        data: dict[str, Any] = {}
        if isinstance(request, GenerateRequest):
            # Already checked: keep values that went through as Unchecked.
            data.update(request.model_dump())
            data["mode"], data["ratio"] = Unchecked(request.mode), Unchecked(request.ratio)
        elif isinstance(request, Mapping):
            data.update(request)
        elif request is not None:
            raise RequestValidationError(
                "request",
                f"expected a GenerateRequest or a mapping, got {type(request).__name__}",
                "Pass GenerateRequest(prompt=...) or a dict such as {'prompt': '...'}.",
            )
        data.update({k: v for k, v in fields.items() if v is not None})
        for key in data:
            if not isinstance(key, str):
                raise RequestValidationError(
                    repr(key), "is not a field name", "Use string keys: prompt, mode, ratio, images"
                )
        return cls(**data)


_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)


def _as_request_error(exc: ValidationError) -> RequestValidationError:
    err = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in err["loc"]) or "request"
    kind = err["type"]
    if kind == "missing":
        return RequestValidationError(
            field, "is required", f"Pass {field}=..., for example prompt='a fox in the snow'"
        )
    if kind == "extra_forbidden":
        known = ", ".join(GenerateRequest.model_fields)
        return RequestValidationError(
            field, "is not a request field", f"Use only {known}; check the spelling."
        )
    ctx = err.get("ctx") or {}
    if kind == "grokimagine_invalid":
        return RequestValidationError(field, str(ctx["problem"]), str(ctx["fix"]))
    return RequestValidationError(
        field, str(err.get("msg", "is invalid")), "See the GenerateRequest documentation"
    )


class TaskState(str, enum.Enum):
    """Where a task is in its life. ``completed`` and ``failed`` are final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """True once the task can no longer change."""
        return self in (TaskState.COMPLETED, TaskState.FAILED)

    def __str__(self) -> str:
        return self.value


_PENDING_WORDS = frozenset({"pending", "queued", "queuing", "queueing", "waiting", "submitted"})
_SUCCESS_WORDS = frozenset({"completed", "complete", "success", "succeeded", "done", "finished"})
_FAILURE_WORDS = frozenset(
    {"failed", "fail", "failure", "error", "errored", "expired", "cancelled", "canceled"}
)


class FailureKind(str, enum.Enum):
    """Why a task failed, and so what to do about it."""

    #: The prompt or image was refused by moderation: change it before resubmitting.
    CONTENT_REFUSED = "content_refused"
    #: The image's file type is not supported: send a JPEG, PNG or WebP.
    UNSUPPORTED_FILE = "unsupported_file"
    #: The upstream build failed: a new submission may succeed.
    UPSTREAM_BUILD = "upstream_build"
    #: A passing network error upstream: a new submission may succeed.
    TRANSIENT_NETWORK = "transient_network"
    #: Not one of the documented failures: read ``error_message``.
    UNKNOWN = "unknown"

    @property
    def resubmit_may_succeed(self) -> bool:
        """Whether sending the same request again (and paying again) is known to
        have a chance; False where it is known not to, or not known at all."""
        return self in (FailureKind.UPSTREAM_BUILD, FailureKind.TRANSIENT_NETWORK)

    def __str__(self) -> str:
        return self.value


_FAILURE_PATTERNS: tuple[tuple[re.Pattern[str], FailureKind], ...] = (
    (
        re.compile(r"inappropriate|moderat|content policy|nsfw|prohibited|not allowed", re.I),
        FailureKind.CONTENT_REFUSED,
    ),
    (
        re.compile(r"file type|unsupported (file|image|format)|not supported", re.I),
        FailureKind.UNSUPPORTED_FILE,
    ),
    (re.compile(r"build failed", re.I), FailureKind.UPSTREAM_BUILD),
    (re.compile(r"network|try again|timed? ?out|temporar", re.I), FailureKind.TRANSIENT_NETWORK),
)


def classify_failure(error_message: str | None) -> FailureKind:
    """The :class:`FailureKind` an ``error_message`` describes."""
    for pattern, kind in _FAILURE_PATTERNS:
        if error_message and pattern.search(error_message):
            return kind
    return FailureKind.UNKNOWN


class Task(BaseModel):
    """A video task as ``GET /v1/status`` describes it.

    ``raw_status`` is the server's ``status`` word as sent; ``state`` is what
    it means (a :class:`TaskState`).
    ``videos`` are the result's mp4 URLs: they expire within hours to days,
    so download them soon after completion. Fields the server adds beyond the
    documented ones are kept (``task.model_extra``).
    """

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    #: The task's id, as ``submit()`` returned it.
    task_id: str
    #: The server's ``status`` word, unchanged; :attr:`state` says what it means.
    raw_status: str = Field(
        default="",
        validation_alias=AliasChoices("status", "raw_status"),
        serialization_alias="status",
    )
    #: Why it failed (None unless it did); see :attr:`failure_kind`.
    error_message: str | None = None
    #: Credits the task consumed, as the server says (a failed task may not be refunded).
    consumed_credits: int | None = None
    #: When the task was created (timezone-aware, UTC if the server gave no zone).
    created_at: datetime | None = None
    #: The request as the server echoed it.
    request: dict[str, Any] | None = None
    #: The mp4 URLs (the API's ``response`` field). May be empty even when completed.
    videos: tuple[str, ...] = Field(default=(), validation_alias=AliasChoices("response", "videos"))

    @field_validator("task_id", mode="before")
    @classmethod
    def _check_task_id(cls, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value:
            raise ValueError("task_id must be a non-empty string")
        return value

    @field_validator("raw_status", mode="before")
    @classmethod
    def _status_text(cls, value: object) -> str:
        return "" if value is None else str(value)

    @field_validator("error_message", mode="before")
    @classmethod
    def _error_text(cls, value: object) -> str | None:
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        return text if text.strip() else None

    @field_validator("consumed_credits", mode="before")
    @classmethod
    def _credits(cls, value: object) -> int | None:
        try:
            return None if value is None else int(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            return None

    @field_validator("created_at", mode="before")
    @classmethod
    def _created_at(cls, value: object) -> datetime | None:
        # A timestamp in an odd shape must not make the whole task unreadable.
        if value is None or value == "":
            return None
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                seconds = value / 1000 if value > 1e12 else value
                return datetime.fromtimestamp(seconds, tz=timezone.utc)
            if isinstance(value, datetime):
                parsed = value
            elif isinstance(value, str):
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            else:
                return None
        except (ValueError, OverflowError, OSError):
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)

    @field_validator("request", mode="before")
    @classmethod
    def _request(cls, value: object) -> dict[str, Any] | None:
        return dict(value) if isinstance(value, Mapping) else None

    @field_validator("videos", mode="before")
    @classmethod
    def _videos(cls, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        items = [value] if isinstance(value, (str, Mapping)) else value
        if not isinstance(items, (list, tuple)):
            return ()
        urls: list[str] = []
        for item in items:
            if isinstance(item, Mapping):
                item = item.get("url")
            if isinstance(item, str) and item.strip():
                urls.append(item.strip())
        return tuple(urls)

    @property
    def state(self) -> TaskState:
        """The normalised state; a non-null ``error_message`` means failed."""
        if self.error_message is not None:
            return TaskState.FAILED
        word = self.raw_status.strip().lower().replace("-", "_").replace(" ", "_")
        if word in _SUCCESS_WORDS:
            return TaskState.COMPLETED
        if word in _FAILURE_WORDS:
            return TaskState.FAILED
        if word in _PENDING_WORDS:
            return TaskState.PENDING
        return TaskState.RUNNING

    @property
    @deprecated("Task.status is now Task.raw_status (the server's word); Task.state is its meaning")
    def status(self) -> str:
        """Deprecated: the server's word is :attr:`raw_status`, its meaning :attr:`state`."""
        warnings.warn(
            "Task.status is now Task.raw_status (the server's word); use Task.state for "
            "what it means",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.raw_status

    def __hash__(self) -> int:
        # The echoed request is a dict: hash what identifies the task's state instead.
        return hash((self.task_id, self.raw_status, self.error_message, self.videos))

    @property
    def is_terminal(self) -> bool:
        """True once the task is completed or failed."""
        return self.state.is_terminal

    @property
    def failure_kind(self) -> FailureKind | None:
        """Why it failed (None unless failed)."""
        if self.state is not TaskState.FAILED:
            return None
        if self.error_message is None and self.raw_status.strip().lower() == "expired":
            return FailureKind.TRANSIENT_NETWORK
        return classify_failure(self.error_message)

    @property
    def resubmit_may_succeed(self) -> bool:
        """For a failed task: whether a new submission of the same request could work."""
        kind = self.failure_kind
        return kind is not None and kind.resubmit_may_succeed


def check_task_id(task_id: object) -> str:
    """A task id as given, stripped; :class:`RequestValidationError` when it is not one."""
    if not isinstance(task_id, str) or not task_id.strip():
        raise RequestValidationError(
            "task_id",
            f"must be a non-empty string, got {task_id!r}",
            "Pass the id that submit() returned, such as 'task_123456789'.",
        )
    return task_id.strip()
