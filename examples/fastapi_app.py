"""A FastAPI back end that starts videos and reports on them.

    GROKIMAGINE_API_KEY=... uvicorn examples.fastapi_app:app

One ``AsyncClient`` lives as long as the app (its lifespan) and is shared by
every request, so every request shares one connection pool and one rate
limiter. ``POST /videos`` answers the task id at once; ``GET /videos/{id}``
answers the task's state; ``GET /videos/{id}/events`` streams its progress as
server-sent events until it is done.

Under several workers, name one Redis so that they share the token's plan
instead of each spending all of it (``pip install 'grokimagine-async[redis]'``)::

    GROKIMAGINE_REDIS_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app --workers 4
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from grokimagine_async import (
    DOCUMENTED_MODES,
    DOCUMENTED_RATIOS,
    APIStatusError,
    AsyncClient,
    GrokImagineError,
    NotFoundError,
    RequestValidationError,
    SubmitUncertainError,
    Task,
)

# What a web caller should send instead, in the JSON body's terms: the library's own
# advice names Python arguments and classes, which mean nothing to a caller of this API.
FIX_FOR_CALLERS = {
    "prompt": 'send "prompt": a description of the video, not empty',
    "mode": f'send "mode" as one of {", ".join(DOCUMENTED_MODES)}',
    "ratio": f'send "ratio" as one of {", ".join(DOCUMENTED_RATIOS)}',
    "images": 'send "images" as a list of http(s) URLs of images the API can fetch',
}


def upstream(exc: GrokImagineError) -> HTTPException:
    """What a web caller is told of the video service's failure: its own words where
    the API gave them, never the upstream URL or how this app reaches it (those go to
    the log)."""
    if isinstance(exc, NotFoundError):
        return HTTPException(404, "no such task")
    if isinstance(exc, SubmitUncertainError):
        # Not retried here either: it may have created a paid task.
        return HTTPException(502, "the video service did not answer; the task may exist")
    if isinstance(exc, APIStatusError) and exc.api_message:
        return HTTPException(502, exc.api_message)
    return HTTPException(502, "the video service could not be reached; try again shortly")


class VideoRequest(BaseModel):
    prompt: str
    mode: str = "normal"
    ratio: str = "1:1"
    images: list[str] = []


def describe(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "state": task.state.value,
        "status": task.raw_status,
        "videos": list(task.videos),
        "error_message": task.error_message,
        "failure_kind": task.failure_kind.value if task.failure_kind else None,
    }


def create_app(
    make_client: Callable[[], AsyncClient] = AsyncClient, poll_every: float = 5.0
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with make_client() as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    def client_of(request: Request) -> AsyncClient:
        client: AsyncClient = request.app.state.client
        return client

    @app.post("/videos", status_code=202)
    async def start(body: VideoRequest, request: Request) -> dict[str, str]:
        try:
            task_id = await client_of(request).submit(body.model_dump())
        except RequestValidationError as exc:
            fix = FIX_FOR_CALLERS.get(exc.field, "correct the field and send the request again")
            detail = {"field": exc.field, "problem": exc.problem, "fix": fix}
            raise HTTPException(422, detail) from exc
        except GrokImagineError as exc:
            raise upstream(exc) from exc
        return {"task_id": task_id}

    @app.get("/videos/{task_id}")
    async def state(task_id: str, request: Request) -> dict[str, Any]:
        try:
            return describe(await client_of(request).get_task(task_id))
        except GrokImagineError as exc:
            raise upstream(exc) from exc

    @app.get("/videos/{task_id}/events")
    async def events(task_id: str, request: Request) -> StreamingResponse:
        client = client_of(request)

        async def stream() -> AsyncIterator[str]:
            last = None
            while True:
                try:
                    task = await client.get_task(task_id)
                except GrokImagineError as exc:
                    yield f"event: error\ndata: {json.dumps(upstream(exc).detail)}\n\n"
                    return
                if task.raw_status != last:
                    last = task.raw_status
                    yield f"data: {json.dumps(describe(task))}\n\n"
                if task.is_terminal:
                    return
                await anyio.sleep(poll_every)

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


app = create_app()
