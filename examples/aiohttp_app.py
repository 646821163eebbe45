"""An aiohttp back end that starts videos and reports on them.

    GROKIMAGINE_API_KEY=... python examples/aiohttp_app.py

The same as ``fastapi_app.py``: one ``AsyncClient`` for the app's life (its
``cleanup_ctx``), ``POST /videos`` answers the task id at once,
``GET /videos/{task_id}`` the task's state, and ``GET /videos/{task_id}/events``
streams its progress as server-sent events until it is done.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from aiohttp import web

from grokimagine_async import (
    APIStatusError,
    AsyncClient,
    GrokImagineError,
    NotFoundError,
    RequestValidationError,
    SubmitUncertainError,
    Task,
)

CLIENT = web.AppKey("client", AsyncClient)


def describe(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "state": task.state.value,
        "status": task.raw_status,
        "videos": list(task.videos),
        "error_message": task.error_message,
        "failure_kind": task.failure_kind.value if task.failure_kind else None,
    }


def upstream(exc: GrokImagineError) -> tuple[int, str]:
    """What a web caller is told of the video service's failure (see fastapi_app.py):
    its own words where the API gave them, never the upstream URL."""
    if isinstance(exc, NotFoundError):
        return 404, "no such task"
    if isinstance(exc, SubmitUncertainError):
        # Not retried here either: it may have created a paid task.
        return 502, "the video service did not answer; the task may exist"
    if isinstance(exc, APIStatusError) and exc.api_message:
        return 502, exc.api_message
    return 502, "the video service could not be reached; try again shortly"


def create_app(
    make_client: Callable[[], AsyncClient] = AsyncClient, poll_every: float = 5.0
) -> web.Application:
    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        async with make_client() as client:
            app[CLIENT] = client
            yield

    async def start(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            task_id = await request.app[CLIENT].submit(body)
        except ValueError as exc:
            if isinstance(exc, RequestValidationError):
                detail = {"field": exc.field, "problem": exc.problem, "fix": exc.fix}
                return web.json_response({"detail": detail}, status=422)
            return web.json_response({"detail": "the body must be JSON"}, status=400)
        except GrokImagineError as exc:
            status, said = upstream(exc)
            return web.json_response({"detail": said}, status=status)
        return web.json_response({"task_id": task_id}, status=202)

    async def state(request: web.Request) -> web.Response:
        try:
            task = await request.app[CLIENT].get_task(request.match_info["task_id"])
        except GrokImagineError as exc:
            status, detail = upstream(exc)
            return web.json_response({"detail": detail}, status=status)
        return web.json_response(describe(task))

    async def events(request: web.Request) -> web.StreamResponse:
        client = request.app[CLIENT]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        last = None
        while True:
            try:
                task = await client.get_task(request.match_info["task_id"])
            except GrokImagineError as exc:
                detail = json.dumps(upstream(exc)[1])
                await response.write(f"event: error\ndata: {detail}\n\n".encode())
                break
            if task.raw_status != last:
                last = task.raw_status
                await response.write(f"data: {json.dumps(describe(task))}\n\n".encode())
            if task.is_terminal:
                break
            await anyio.sleep(poll_every)
        await response.write_eof()
        return response

    app = web.Application()
    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/videos", start)
    app.router.add_get("/videos/{task_id}", state)
    app.router.add_get("/videos/{task_id}/events", events)
    return app


if __name__ == "__main__":
    web.run_app(create_app())
