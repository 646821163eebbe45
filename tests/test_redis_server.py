"""Tests of the real Redis server the shared limiter's tests run against (redis_server.py)."""

from __future__ import annotations

import os

import pytest
import redis.asyncio as aioredis

from .redis_server import RedisServer

# redis.asyncio runs on asyncio only.
pytestmark = [pytest.mark.anyio, pytest.mark.backends("asyncio", reason="redis.asyncio")]


async def test_answers_ping_through_redis_asyncio(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


async def test_restart_comes_back_empty_on_the_same_url(redis_server: RedisServer) -> None:
    url, port = redis_server.url, redis_server.port
    before = aioredis.Redis.from_url(url)
    try:
        await before.set("key", "value")
        assert await before.get("key") == b"value"
    finally:
        await before.aclose()
    redis_server.restart()
    assert (redis_server.url, redis_server.port) == (url, port)
    # A new client: an old one's pooled connection died with the old server, and
    # redis-py's from_url (no retry policy) reports that once before reconnecting.
    after = aioredis.Redis.from_url(url)
    try:
        assert await after.ping() is True
        assert await after.get("key") is None
        assert await after.dbsize() == 0
    finally:
        await after.aclose()


def test_stop_leaves_no_process(redis_server: RedisServer) -> None:
    process = redis_server.process
    assert process is not None
    assert redis_server.running
    redis_server.stop()
    assert not redis_server.running
    assert process.returncode is not None  # exited, and reaped by stop()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
