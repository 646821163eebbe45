"""What the bulk calls hand back: one outcome per request, and a batch's progress."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._exceptions import GrokImagineError
from ._models import GenerateRequest, Task

__all__ = ["Outcome", "OutcomeStatus", "PipelineProgress", "SubmitOutcome"]


@dataclass(frozen=True)
class SubmitOutcome:
    """What became of one request of :meth:`AsyncClient.submit_many`."""

    #: The request's place in the input, from 0.
    index: int
    #: The request as checked; None if it could not be read as one.
    request: GenerateRequest | None
    #: The task it created: poll or watch it. None when ``error`` says why not.
    task_id: str | None = None
    #: Why there is no task id: a ``RequestValidationError``, an API error, or a
    #: ``SubmitUncertainError`` (a task may exist without its id).
    error: GrokImagineError | None = None

    @property
    def ok(self) -> bool:
        """True when the request created a task (``task_id`` is set)."""
        return self.task_id is not None


class OutcomeStatus(str, enum.Enum):
    """How one request of a pipeline settled (not to be confused with a task's
    :class:`TaskState`, or the server's raw status word)."""

    #: The video is ready: ``outcome.result().videos``.
    COMPLETED = "completed"
    #: The task failed: ``outcome.task.failure_kind`` says why.
    FAILED = "failed"
    #: Refused before or at submission, or lost to a polling error.
    ERROR = "error"
    #: The POST may have created a task whose id never came back.
    UNCERTAIN = "uncertain"
    #: Not submitted: ``max_credits``, the deadline or a stop came first.
    SKIPPED = "skipped"
    #: Submitted, not finished by the deadline; a rerun of the journal follows it.
    TIMED_OUT = "timed_out"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PipelineProgress:
    """Where a :meth:`AsyncClient.generate_many` batch stands: ``pipeline.progress``."""

    #: Requests in the batch (0 until the pipeline starts); None while a streamed
    #: input (a generator, an async iterator) has not ended: the total is not known yet.
    total: int | None
    #: Not yet submitted, of the requests read so far (of all of them once the
    #: total is known).
    queued: int
    #: Being submitted now.
    submitting: int
    #: Submitted, with a task id, not yet finished.
    running: int
    #: Settled: completed, failed, errored, uncertain, skipped or timed out.
    settled: int
    #: Credits the batch has spent or committed, earlier runs of its journal included.
    spent_credits: int


@dataclass(frozen=True)
class Outcome:
    """One request of :meth:`AsyncClient.generate_many`, settled.

    ``outcome.result()`` is the typed way to the video: the completed
    :class:`Task`, or the outcome's error raised.
    """

    #: The request's place in the input, from 0.
    index: int
    #: The request as checked; None if it could not be read as one.
    request: GenerateRequest | None
    #: How it settled; see :class:`OutcomeStatus`.
    status: OutcomeStatus
    #: The task it created, if it got that far (also for failed and timed-out ones).
    task_id: str | None = None
    #: The task's last state, if one was seen: its ``videos`` when completed,
    #: ``failure_kind`` when failed. :meth:`result` gives it typed as present.
    task: Task | None = None
    #: Why it is not completed: a validation or API error, ``TaskFailedError``,
    #: ``SubmitUncertainError``, ``BudgetExceededError``, ``TaskTimeoutError``...
    error: GrokImagineError | None = None
    #: True when this outcome was read from the journal of an earlier run.
    from_journal: bool = False

    @property
    def ok(self) -> bool:
        """True when the video is ready (``status`` is ``COMPLETED``)."""
        return self.status is OutcomeStatus.COMPLETED

    def result(self) -> Task:
        """The completed task (``client.download(outcome.result(), ...)``).

        Raises:
            GrokImagineError: the outcome's ``error`` when it is not completed
                (``TaskFailedError``, ``SubmitUncertainError``, ...).
        """
        if self.status is OutcomeStatus.COMPLETED and self.task is not None:
            return self.task
        if self.error is not None:
            raise self.error
        raise GrokImagineError(f"request {self.index} is {self.status}, not completed")

    @property
    def videos(self) -> tuple[str, ...]:
        """The video URLs of a completed task (empty otherwise); they expire."""
        return self.task.videos if self.task is not None else ()
