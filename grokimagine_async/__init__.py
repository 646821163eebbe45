"""Asyncio client for the Grok Imagine video API.

::

    from grokimagine_async import AsyncClient

    async with AsyncClient() as client:      # token from GROKIMAGINE_API_KEY
        task = await client.generate(prompt="a fox in the snow")
        print(task.videos)
"""

from ._blocking import BlockingGenerationPipeline, BlockingTaskWatch, Client
from ._client import DEFAULT_TIMEOUT, AsyncClient
from ._config import CREDITS_PER_VIDEO, USD_PER_CREDIT, RateLimit, Tier
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    ConfigurationError,
    DownloadError,
    GrokImagineError,
    InputFileError,
    JournalError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RateLimiterUnavailableError,
    RequestValidationError,
    ServerError,
    SubmitUncertainError,
    TaskError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
    VideoExpiredError,
    WatchTimeoutError,
)
from ._headers import RateFeedback
from ._limiter import Limiter, RateLimitStatus, Slot
from ._models import (
    DOCUMENTED_MODES,
    DOCUMENTED_RATIOS,
    FailureKind,
    GenerateRequest,
    Task,
    TaskState,
    Unchecked,
)
from ._outcomes import Outcome, OutcomeStatus, PipelineProgress, SubmitOutcome
from ._pipeline import GenerationPipeline
from ._priority import BULK_MIN_SHARE, Priority
from ._redis_limiter import RedisLimiter
from ._sliding_window import SlidingWindowLimiter
from ._version import __version__
from ._watch import TaskWatch

__all__ = [
    "BULK_MIN_SHARE",
    "CREDITS_PER_VIDEO",
    "DEFAULT_TIMEOUT",
    "DOCUMENTED_MODES",
    "DOCUMENTED_RATIOS",
    "USD_PER_CREDIT",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BlockingGenerationPipeline",
    "BlockingTaskWatch",
    "BudgetExceededError",
    "Client",
    "ClientClosedError",
    "ConfigurationError",
    "DownloadError",
    "FailureKind",
    "GenerateRequest",
    "GenerationPipeline",
    "GrokImagineError",
    "InputFileError",
    "JournalError",
    "Limiter",
    "MalformedResponseError",
    "NotFoundError",
    "Outcome",
    "OutcomeStatus",
    "PipelineProgress",
    "Priority",
    "RateFeedback",
    "RateLimit",
    "RateLimitError",
    "RateLimitStatus",
    "RateLimiterUnavailableError",
    "RedisLimiter",
    "RequestValidationError",
    "ServerError",
    "SlidingWindowLimiter",
    "Slot",
    "SubmitOutcome",
    "SubmitUncertainError",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskPollError",
    "TaskState",
    "TaskTimeoutError",
    "TaskWatch",
    "Tier",
    "Unchecked",
    "VideoExpiredError",
    "WatchTimeoutError",
    "__version__",
]
