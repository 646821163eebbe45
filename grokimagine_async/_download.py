"""Downloading a task's videos: streamed, checked, and never half-written."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import anyio
import anyio.to_thread
import httpx

from ._exceptions import DownloadError, VideoExpiredError
from ._http import RetryPolicy
from ._models import Task, TaskState

__all__ = ["download_task"]

logger = logging.getLogger("grokimagine_async")

_EXPIRED = frozenset({401, 403, 404, 410})
#: Content types a video may come as besides video/* (RFC 4337's, and the generic
#: ones object stores give files uploaded without one).
_VIDEO_TYPES = frozenset({"application/mp4", "application/octet-stream", "binary/octet-stream"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Characters of a task id kept in a file name; the rest of a longer one is a hash.
_NAME_CHARS = 100


#: Retries and backoff when the caller names none: the client's defaults.
_DEFAULT_RETRY = RetryPolicy()


async def download_task(
    http: httpx.AsyncClient,
    task: Task,
    directory: str | Path,
    *,
    concurrency: int = 4,
    retry: RetryPolicy = _DEFAULT_RETRY,
    chunk_size: int = 1 << 16,
) -> list[Path]:
    """Stream every video of a completed ``task`` into ``directory``.

    Files are named ``<task_id>_<n>.mp4``, so no two videos of a batch share a
    name; a task id that is no plain file name (one with ``/`` or ``..`` in it,
    say) is made one, so nothing is written outside ``directory``. Each is
    written to ``<name>.part`` and renamed only when whole, so a crash never
    leaves a half-written mp4 under the final name, and a failed or cancelled
    download leaves no ``.part`` behind; a file already there is kept, not
    downloaded again. Redirects (a CDN's signed location) are
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
            target = folder / f"{_file_stem(task.task_id)}_{n}.mp4"
            try:
                if not await target.exists():
                    await _fetch(http, url, target, retry, chunk_size, task.task_id)
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
    retry: RetryPolicy,
    chunk_size: int,
    task_id: str,
) -> None:
    partial = target.with_name(target.name + ".part")
    looked_again = False
    attempt = 0
    while True:
        try:
            await _fetch_once(http, url, partial, chunk_size, task_id, first=not looked_again)
        except _NotYetThere as exc:
            # Outside the retries: a link that 404s twice has expired, retries or none.
            looked_again = True
            delay = retry.backoff(1)
            logger.info("looking again at %s in %.2fs after: %s", url, delay, exc)
            await anyio.sleep(delay)
        except (httpx.TransportError, _Retryable) as exc:
            if attempt == retry.max_retries:
                raise DownloadError(
                    f"could not download {url} after {attempt + 1} attempts: {exc}", url=url
                ) from exc
            attempt += 1
            delay = retry.backoff(attempt)
            logger.info("retrying download of %s in %.2fs after: %s", url, delay, exc)
            await anyio.sleep(delay)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # Not the network: too many redirects, a body that does not decode, a URL
            # that is none. Trying again would fail alike.
            raise DownloadError(f"could not download {url}: {exc}", url=url) from exc
        else:
            await partial.replace(target)
            return
        finally:
            # A plain call, not an await: a cancelled download must still clean up.
            Path(partial).unlink(missing_ok=True)  # noqa: ASYNC240


def _file_stem(task_id: str) -> str:
    """A task id as a file name of its own in the folder: the server's word decides
    it, and ``../x``, ``/etc/x`` or a NUL would write elsewhere or not at all."""
    stem = _UNSAFE.sub("_", task_id)
    if stem == task_id and len(stem) <= _NAME_CHARS and stem.strip("."):
        return stem
    # Changed, so two ids could come out alike: a hash of the id tells them apart.
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem[:_NAME_CHARS]}-{digest}"


class _Retryable(Exception):
    pass


class _NotYetThere(Exception):
    """A fresh link that answered 404: it may not have reached every edge of the host."""


def _mp4_cut_short(path: Path) -> bool:
    """Whether an MP4 file ends inside one of its top-level boxes (a body cut short
    whose length header was cut to match). A file that is not an MP4 passes."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if f.read(8)[4:8] != b"ftyp":
            return False
        offset = 0
        while offset < size:
            f.seek(offset)
            header = f.read(16)
            box = int.from_bytes(header[:4], "big") if len(header) >= 8 else -1
            if box == 1:
                box = int.from_bytes(header[8:16], "big") if len(header) >= 16 else -1
            elif box == 0:
                return False  # the last box runs to the end of the file
            if box < 8:
                return True
            offset += box
        return offset != size


async def _fetch_once(
    http: httpx.AsyncClient,
    url: str,
    partial: anyio.Path,
    chunk_size: int,
    task_id: str,
    *,
    first: bool,
) -> None:
    try:
        request = http.build_request("GET", url)
        # Video hosts are not the API: the token must never travel there. Redirects are
        # built from this request's headers, so they carry no token either.
        request.headers.pop("Authorization", None)
        response = await http.send(request, stream=True, follow_redirects=True)
    except ValueError as exc:
        # httpx lets some bad URLs through as plain ValueErrors: a redirect's Location
        # that its cookie jar cannot read, say.
        raise httpx.InvalidURL(f"{type(exc).__name__}: {exc}") from exc
    try:
        if first and response.status_code == 404:
            raise _NotYetThere("HTTP 404")
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
        if kind and not (kind.startswith("video/") or kind in _VIDEO_TYPES):
            # A 200 that is no video is most often a proxy's or the host's error page.
            raise _Retryable(f"the answer is {kind!r}, not a video")
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
        # ASCII digits only (str.isdigit() passes '²', which int() refuses), compared
        # as digits: int() refuses more than 4300 of them.
        if (
            expected is not None
            and expected.isascii()
            and expected.isdigit()
            and (expected.lstrip("0") or "0") != str(received)
        ):
            raise _Retryable(f"got {received} of {expected} bytes")
        if received == 0:
            raise _Retryable("the answer was empty")
        if await anyio.to_thread.run_sync(_mp4_cut_short, Path(partial)):
            raise _Retryable("the MP4 ends inside one of its boxes: it was cut short")
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
