"""Downloading a task's videos: streamed, checked, and never half-written."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import anyio
import httpx

from ._exceptions import DownloadError, VideoExpiredError
from ._models import Task, TaskState

__all__ = ["download_task"]

logger = logging.getLogger("grokimagine_async")

_EXPIRED = frozenset({401, 403, 404, 410})


async def download_task(
    http: httpx.AsyncClient,
    task: Task,
    directory: str | Path,
    *,
    concurrency: int = 4,
    max_retries: int = 3,
    backoff: float = 0.5,
    chunk_size: int = 1 << 16,
) -> list[Path]:
    """Stream every video of a completed ``task`` into ``directory``.

    Files are named ``<task_id>_<n>.mp4``, so no two videos of a batch share a
    name. Each is written to ``<name>.part`` and renamed only when whole, so a
    crash never leaves a half-written mp4 under the final name, and a failed or
    cancelled download leaves no ``.part`` behind; a file already there is
    kept, not downloaded again. Redirects (a CDN's signed location) are
    followed. The ``Authorization`` header is never sent to the hosts that
    serve videos, nor to any they redirect to.

    Every video is tried whatever happens to the others. If any fails, the
    error raised names them all: a single failure is raised as it is; several
    become one :class:`DownloadError` (a :class:`VideoExpiredError` when every
    link had expired) whose ``errors`` lists each and whose ``downloaded``
    lists the files written.
    """
    if task.state is not TaskState.COMPLETED:
        raise DownloadError(
            f"task {task.task_id} is {task.state}, not completed: nothing to download", url=""
        )
    folder = anyio.Path(directory)
    try:
        await folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(folder, exc, task.videos[0] if task.videos else "") from exc
    paths: list[Path | None] = [None] * len(task.videos)
    limit = anyio.CapacityLimiter(max(1, concurrency))

    errors: list[DownloadError] = []

    async def one(n: int, url: str) -> None:
        async with limit:
            target = folder / f"{task.task_id}_{n}.mp4"
            try:
                if not await target.exists():
                    await _fetch(http, url, target, max_retries, backoff, chunk_size, task.task_id)
            except DownloadError as exc:
                errors.append(exc)
            except OSError as exc:
                errors.append(_cannot_write(target, exc, url))
            else:
                paths[n] = Path(target)

    async with anyio.create_task_group() as tg:
        for n, url in enumerate(task.videos):
            tg.start_soon(one, n, url)
    done = [p for p in paths if p is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        expired = all(isinstance(e, VideoExpiredError) for e in errors)
        cls = VideoExpiredError if expired else DownloadError
        detail = "; ".join(str(e) for e in errors)
        raise cls(
            f"{len(errors)} of {len(task.videos)} videos of task {task.task_id} were not "
            f"downloaded: {detail}",
            url=errors[0].url,
            errors=errors,
            downloaded=done,
        )
    return done


async def _fetch(
    http: httpx.AsyncClient,
    url: str,
    target: anyio.Path,
    max_retries: int,
    backoff: float,
    chunk_size: int,
    task_id: str,
) -> None:
    partial = target.with_name(target.name + ".part")
    for attempt in range(max_retries + 1):
        try:
            await _fetch_once(http, url, partial, chunk_size, task_id)
        except (httpx.TransportError, _Retryable) as exc:
            if attempt == max_retries:
                raise DownloadError(
                    f"could not download {url} after {attempt + 1} attempts: {exc}", url=url
                ) from exc
            delay = backoff * 2**attempt * (0.75 + random.random() / 4)
            logger.info("retrying download of %s in %.2fs after: %s", url, delay, exc)
            await anyio.sleep(delay)
        else:
            await partial.replace(target)
            return
        finally:
            # A plain call, not an await: a cancelled download must still clean up.
            Path(partial).unlink(missing_ok=True)  # noqa: ASYNC240


class _Retryable(Exception):
    pass


async def _fetch_once(
    http: httpx.AsyncClient, url: str, partial: anyio.Path, chunk_size: int, task_id: str
) -> None:
    request = http.build_request("GET", url)
    # Video hosts are not the API: the token must never travel there. Redirects are
    # built from this request's headers, so they carry no token either.
    request.headers.pop("Authorization", None)
    response = await http.send(request, stream=True, follow_redirects=True)
    try:
        if response.status_code in _EXPIRED:
            raise VideoExpiredError(
                f"the link to {url} has expired (HTTP {response.status_code}): links last "
                f"hours to days. Call get_task({task_id!r}) for the task's current links, "
                "or generate the video again",
                url=url,
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise DownloadError(f"{url}: unexpected HTTP {response.status_code}", url=url)
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not (kind.startswith("video/") or kind == "application/octet-stream"):
            raise DownloadError(f"{url} is {kind!r}, not a video", url=url)
        expected = response.headers.get("content-length")
        received = 0
        f = await anyio.open_file(partial, "wb")
        try:
            async for chunk in response.aiter_bytes(chunk_size):
                await f.write(chunk)
                received += len(chunk)
        finally:
            # Shielded: a cancelled download must still close its file before the
            # caller removes it.
            with anyio.CancelScope(shield=True):
                await f.aclose()
        if expected is not None and expected.isdigit() and int(expected) != received:
            raise _Retryable(f"got {received} of {expected} bytes")
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()


def _cannot_write(where: anyio.Path, exc: OSError, url: str) -> DownloadError:
    reason = exc.strerror or type(exc).__name__
    return DownloadError(
        f"cannot write {where}: {reason}; free some space or pick another folder, then "
        "download again (the video is still on the server until its link expires)",
        url=url,
    )
