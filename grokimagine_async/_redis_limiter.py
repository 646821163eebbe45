"""One token's budget shared by every process through Redis.

**Guarantee**: across every process that names the same Redis, base URL and
token, no window of ``period`` seconds on the API's clock holds more than the
plan's requests.

**Rule**: the in-process limiter's (:class:`~grokimagine_async.SlidingWindowLimiter`),
with the slots kept in Redis: a request takes a slot in one atomic script
before it is sent (held for a lease while in flight), and frees it a period
after its response, on the Redis server's clock, so the hosts' clocks play no
part. What the responses teach (``_rules.py``) is worked out by the process
that got the response and kept in Redis for every process to read. The slow
start and the cap on requests in flight stay each process's own.

**Waiting**: each process queues its own waiters; only the first asks Redis,
for as many slots as are queued in its line, and is told when to ask again, so
nobody polls in a loop. Free slots go to the process that has waited longest,
except that interactive calls go ahead of every process's bulk work, within
the share ``_priority.py`` gives them, counted across processes in Redis.

**Redis unreachable**: a call raises :class:`RateLimiterUnavailableError`
before anything is sent, unless a ``fallback`` share was chosen: the process
then keeps to that share on its own (give each of ``n`` processes at most
``1/n``) and rejoins when Redis answers again.

**Redis restarted** (the window lost): each process re-adds the slots it holds
when it next reaches Redis, or within :data:`RESTART_NOTICE` if it sends
nothing, and grants are held for twice that meanwhile; a process new to a
Redis younger than that holds only for what is left of it.

A process that dies with requests in flight leaves their slots held for the
lease: the longest its client's timeouts let a request take (600 s unbounded).
Runs on asyncio only (``redis.asyncio``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from . import _redis_scripts as scripts
from . import _rules as rules
from ._config import RateLimit
from ._constraints import NEVER, Learned
from ._exceptions import ConfigurationError, RateLimiterUnavailableError
from ._headers import RateFeedback, readable
from ._limiter import RateLimitStatus, RecordedOnce, SlotContext
from ._policy import POLICY
from ._priority import KEEP_WITHIN, Priority, WaitQueue, lead_room, may_lead, reserve
from ._sliding_window import SlidingWindowLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = ["RedisLimiter"]

logger = logging.getLogger("grokimagine_async")


class _Waiter:
    __slots__ = ("error", "event", "grant")

    def __init__(self) -> None:
        self.event = anyio.Event()
        # The slot, when Redis granted it (its clock), and when it was asked for (ours).
        self.grant: tuple[str, float, float] | None = None
        self.error: BaseException | None = None


class _RedisSlot(RecordedOnce):
    """A slot granted by Redis (``seq``) or, while Redis is away, by the fallback."""

    __slots__ = ("_limiter", "granted", "local", "seq", "taken_at")

    def __init__(
        self,
        limiter: RedisLimiter,
        seq: str | None,
        taken_at: float,
        local: Any = None,
        *,
        asked: float | None = None,
    ) -> None:
        super().__init__()
        self._limiter = limiter
        self.seq = seq
        self.taken_at = taken_at
        self.local = local
        #: When it was asked for (at the latest, the request was counted after), on
        #: this host's clock.
        self.granted = time.monotonic() if asked is None else asked

    def _ended(self, feedback: RateFeedback | None, sent: bool) -> None:
        self._limiter._finish(self, feedback, sent)


#: Seconds within which a process that holds slots and sends nothing notices that
#: Redis restarted (it looks this often); grants are held twice this after a restart.
#: Real time, not the plan's: a restart is a real event, and the other processes
#: must re-add their slots before anything new goes.
RESTART_NOTICE = 1.0

#: Tries at writing back what a response taught, when other processes keep writing first.
_APPLY_TRIES = 4

#: Seconds a slot of a request in flight is held when the client's timeouts do not
#: bound how long a request may take.
DEFAULT_LEASE = 600.0


class RedisLimiter:
    """Keeps one token's requests within ``rate`` across processes, through Redis.

    Args:
        redis_url: where Redis is, e.g. ``redis://localhost:6379/0``
            (``rediss://`` for TLS; a password goes in the URL).
        rate: the plan's figures.
        key: names the token in Redis: a hash of the base URL and the token,
            never the token itself (the client passes it).
        fallback: the share of the plan (0 to 1) this process keeps to on its
            own while Redis is unreachable; None (the default) raises
            :class:`RateLimiterUnavailableError` instead.
        lease: seconds a slot of a request in flight is held if its process
            dies before the answer (its slot then frees on its own): the longest
            a request may be in flight. The client passes what its timeouts allow.
        timeout: seconds any one Redis call may take before Redis counts as
            unreachable.
        redis: a ``redis.asyncio.Redis`` of your own, instead of ``redis_url``.
    """

    #: Seconds a process whose turn it is may take to ask.
    TURN = 0.002

    def __init__(
        self,
        redis_url: str | None,
        rate: RateLimit,
        *,
        key: str,
        fallback: float | None = None,
        lease: float = DEFAULT_LEASE,
        timeout: float = 2.0,
        redis: Redis | RedisCluster | None = None,
    ) -> None:
        try:
            from redis import asyncio as _installed  # noqa: F401 - else the extra is missing
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "the shared limiter needs the redis package: pip install 'grokimagine-async[redis]'"
            ) from None
        if sniffio.current_async_library() != "asyncio":
            raise ConfigurationError(
                "the shared limiter on Redis runs on asyncio only (redis.asyncio); under "
                "another event loop, leave redis_url unset"
            )
        if fallback is not None and not (isinstance(fallback, (int, float)) and 0 < fallback <= 1):
            raise ConfigurationError(
                f"redis_fallback must be a share of the plan within (0, 1], got {fallback!r}"
            )
        if redis is None:
            if not redis_url:
                raise ConfigurationError("redis_url must be a URL such as redis://localhost:6379/0")
            redis = _connect(redis_url, timeout)
        self._redis = redis
        self._rate = rate
        self._fallback_share = fallback
        self._lease = lease
        tag = "{" + key + "}"
        self._keys = [
            f"grokimagine:{tag}:{name}"
            for name in ("slots", "state", "queue", "due", "refused", "interactive")
        ]
        self._pid = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._record = redis.register_script(scripts.RECORD)
        self._apply = redis.register_script(scripts.APPLY)
        self._reseed = redis.register_script(scripts.RESEED)
        self._leave = redis.register_script(scripts.LEAVE)
        self._waiters: WaitQueue[_Waiter] = WaitQueue()
        # Interactive grants within the last period, every process's, as Redis last said.
        self._led = 0
        self._asking = False
        self._pending: set[asyncio.Task[None]] = set()
        # What this process holds, for re-adding after a restart: answered slots by
        # when they free (monotonic), and how many are in flight.
        self._held: deque[float] = deque()
        self._in_flight = 0
        self._epoch: str | None = None
        # Until when (this process's clock) a new process holds grants on a Redis
        # that may have just restarted; None until asked.
        self._young_until: float | None = None
        # Watches for a restart while this process holds slots, so that it re-adds
        # them even if it sends nothing more.
        self._watcher: asyncio.Task[None] | None = None
        self._reseeds = 0
        self._fallback: SlidingWindowLimiter | None = None
        self._retry_redis_at = 0.0
        # Set while a call re-adds this process's slots to a Redis that answers again.
        self._rejoining: anyio.Event | None = None
        # The last (free, pace, burst) Redis told, and when.
        self._last: tuple[int, float, int] = (rate.requests, 0.0, rate.requests)
        self._last_at = -math.inf
        self._refreshing = False
        # Reports that did not reach Redis (it was away): (slot, sent).
        self._unreported: list[tuple[str, bool]] = []
        # The last estimates of someone else's use (see rules.told), and the learned
        # state before any response, for the scripts.
        self._samples: deque[int] = deque(maxlen=POLICY.others_samples)
        # 429s being learnt from: this process asks for nothing until they are
        # written, so that the gate they shut holds its own next request too.
        self._learning = 0
        self._learnt = anyio.Event()
        self._initial = json.loads(rules.initial(rate, NEVER).to_json())
        #: Calls to Redis that failed other than by Redis being away (a script's
        #: error, a command refused): each is logged at WARNING.
        self.script_errors = 0

    # -- the Limiter interface ------------------------------------------------------

    @property
    def rate(self) -> RateLimit:
        """The figures in force now."""
        return self._rate

    def set_rate(self, rate: RateLimit) -> None:
        """Keep to ``rate`` from now on (every process should state the same)."""
        self._rate = rate
        self._initial = json.loads(rules.initial(rate, NEVER).to_json())
        if self._fallback is not None:
            self._fallback.set_rate(self._fallback_rate())

    def status(self) -> RateLimitStatus:
        """The budget as this process last heard it from Redis (asked again in the
        background when that is more than a twentieth of a period old)."""
        free, pace, burst = self._last
        now = time.monotonic()
        stale = now - self._last_at > POLICY.status_fresh_share * self._rate.period
        if stale and not self._refreshing:
            with suppress(RuntimeError):  # no event loop running: the last figures do
                self._spawn(self._look(None))
                self._refreshing = True
        self._expire_held(now)
        return RateLimitStatus(
            limit=self._rate.requests,
            period=self._rate.period,
            remaining=free,
            resets_in=(self._held[-1] - time.monotonic()) if self._held else 0.0,
            waiting=len(self._waiters),
            in_flight=self._in_flight,
            pace=pace or None,
            burst=burst if pace else None,
        )

    def slot(self) -> SlotContext[_RedisSlot]:
        """Wait for permission to send one request (see :meth:`Limiter.slot`)."""
        return SlotContext(self.acquire)

    async def aclose(self) -> None:
        """Wait for the reports still on their way to Redis, then close the connection."""
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()

    # -- waiting --------------------------------------------------------------------

    async def acquire(self) -> _RedisSlot:
        """Wait for a slot. The caller must ``record`` on it exactly once."""
        if self._fallback is not None and not await self._rejoin():
            return await self._acquire_locally()
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            while waiter.grant is None and waiter.error is None:
                if self._head() is waiter and not self._asking:
                    delay = await self._ask()
                    if waiter.grant is not None or waiter.error is not None:
                        break
                else:
                    delay = math.inf
                waiter.event = anyio.Event()
                with anyio.move_on_after(delay):
                    await waiter.event.wait()
        except BaseException:
            if waiter.grant is not None:
                self._give_back(waiter.grant[0])
            self._waiters.remove(waiter)
            if not self._waiters:
                self._spawn(self._leave_queue())
            self._nudge()
            raise
        if waiter.error is not None:
            if isinstance(waiter.error, _FellBack):
                if self._fallback is None:  # rejoined meanwhile
                    return await self.acquire()
                return await self._acquire_locally()
            raise waiter.error
        seq, taken_at, asked = waiter.grant  # type: ignore[misc]
        self._in_flight += 1
        self._watch()
        return _RedisSlot(self, seq, taken_at, asked=asked)

    async def _ask(self) -> float:
        """Ask Redis for slots for the queued waiters; seconds until asking again."""
        self._asking = True
        try:
            while self._learning:
                await self._learnt.wait()
            lead = self._lead()
            priority = self._waiters.head_priority(lead) or Priority.BULK
            interactive = priority is Priority.INTERACTIVE
            # One line at a time, so that Redis counts interactive grants exactly.
            want = self._waiters.count(priority)
            keep = 0 if interactive else reserve(self._led, self._rate.requests)
            try:
                restarted = await self._maybe_restarted()
                asked = time.monotonic()
                call = asyncio.ensure_future(
                    self._run_acquire(
                        want,
                        restarted,
                        interactive=interactive,
                        lead=interactive and lead,
                        keep=keep,
                    )
                )
                try:
                    reply = await asyncio.shield(call)
                except asyncio.CancelledError:
                    # A grant whose answer the cancellation dropped would hold its
                    # slots for a whole lease: they go back when it comes.
                    call.add_done_callback(self._give_back_grant)
                    raise
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                self._unreachable(exc)
                return 0.0
            granted, first, taken_at = (
                int(reply["granted"]),
                int(reply["first"]),
                float(reply["now"]),
            )
            wait = float(reply["wait"])
            epoch = str(reply["epoch"])
            self._heard(reply)
            self._led = int(reply.get("led", 0))
            for i in range(granted):
                waiter = self._waiters.pop(priority)
                if waiter is None:
                    # Cancelled while asking: the slot goes back unused.
                    self._give_back(f"{epoch}:{first + i}")
                    continue
                waiter.grant = (f"{epoch}:{first + i}", taken_at, asked)
                waiter.event.set()
            await self._check_epoch(epoch)
            if not granted and reserve(self._led, self._rate.requests) < keep:
                # Refused for slots kept on a count of interactive grants that has
                # since aged: fewer are kept now, so ask again at once.
                return 0.0
            return 0.0 if granted else wait
        finally:
            self._asking = False
            self._nudge()

    def _restart_hold(self) -> float:
        """Seconds grants are held after a restart: twice the time a process holding
        slots takes to notice it (a compressed period notices sooner)."""
        return 2 * min(RESTART_NOTICE, self._rate.period / 8)

    async def _maybe_restarted(self) -> float:
        """Seconds to hold grants if Redis has lost the state: the whole hold if this
        process talked to it before, what is left of it if Redis started less than
        that ago (others may still be re-adding), else none."""
        hold = self._restart_hold()
        if self._epoch is not None:
            return hold
        now = time.monotonic()
        if self._young_until is None:
            from redis.exceptions import ResponseError

            try:
                info = await self._redis.info("server")
            except ResponseError:  # INFO not allowed to this user: assume the worst
                uptime = 0.0
            else:
                uptime = _uptime(info)
            # INFO counts whole seconds: up to one more may have gone by.
            self._young_until = now + max(0.0, hold - uptime)
        return max(0.0, self._young_until - now)

    def _lead(self) -> bool:
        return may_lead(self._led, self._rate.requests)

    def _head(self) -> _Waiter | None:
        return self._waiters.head(self._lead())

    def _nudge(self) -> None:
        head = self._head()
        if head is not None:
            head.event.set()

    def _unreachable(self, exc: BaseException) -> None:
        if self._fallback_share is None:
            error = RateLimiterUnavailableError(
                f"the shared rate limiter's Redis cannot be reached ({type(exc).__name__}); "
                "nothing was sent. Check redis_url, or set redis_fallback (a share of the "
                "plan each process keeps to on its own meanwhile)"
            )
            error.__cause__ = exc
            fail: BaseException = error
        else:
            self._fall_back(exc)
            fail = _FellBack()
        self._spawn(self._leave_queue())
        while (waiter := self._head()) is not None:
            self._waiters.remove(waiter)
            waiter.error = fail
            waiter.event.set()

    # -- Redis away: the fallback ------------------------------------------------------

    def _fallback_rate(self) -> RateLimit:
        assert self._fallback_share is not None
        share = max(1, math.floor(self._rate.requests * self._fallback_share))
        return RateLimit(share, self._rate.period)

    def _fall_back(self, exc: BaseException) -> None:
        if self._fallback is None:
            logger.warning(
                "the shared rate limiter's Redis cannot be reached (%s): keeping to "
                "%.0f%% of the plan in this process until it answers again",
                type(exc).__name__,
                100 * (self._fallback_share or 0),
            )
            self._fallback = SlidingWindowLimiter(self._fallback_rate())
        self._retry_redis_at = time.monotonic() + POLICY.redis_retry_share * self._rate.period

    async def _acquire_locally(self) -> _RedisSlot:
        assert self._fallback is not None
        fallback = self._fallback
        local = await fallback.acquire()
        if self._fallback is not fallback or self._rejoining is not None:
            # Rejoined Redis, or rejoining, while waiting here: the slot must come from
            # Redis (one granted here while the held slots are being re-added would be
            # one Redis never hears of).
            local.record(None, sent=False)
            return await self.acquire()
        self._in_flight += 1
        return _RedisSlot(self, None, 0.0, local)

    async def _rejoin(self) -> bool:
        """Whether Redis answers again (asked at most every eighth of a period).

        While one call re-adds this process's slots, the others wait for it rather
        than take local slots: a request granted locally in that time would be
        missing from what Redis was told."""
        if self._rejoining is not None:
            await self._rejoining.wait()
            return self._fallback is None
        now = time.monotonic()
        if now < self._retry_redis_at:
            return False
        self._retry_redis_at = now + POLICY.redis_retry_share * self._rate.period
        rejoining = self._rejoining = anyio.Event()
        try:
            await self._reseed_slots()
        except Exception as exc:
            if not _unreachable(exc):
                raise
            return False
        else:
            logger.warning("the shared rate limiter's Redis answers again: sharing the plan")
            self._fallback = None
            return True
        finally:
            self._rejoining = None
            rejoining.set()

    # -- reporting ------------------------------------------------------------------

    def _finish(self, slot: _RedisSlot, feedback: RateFeedback | None, sent: bool) -> None:
        self._in_flight -= 1
        now = time.monotonic()
        if sent:
            self._expire_held(now)
            self._held.append(now + self._rate.period)
        if slot.local is not None:
            slot.local.record(feedback, sent=sent)
        if slot.seq is not None:
            refused = feedback is not None and feedback.rate_limited
            if refused:
                self._learning += 1
                if self._learnt.is_set():
                    self._learnt = anyio.Event()
            out = now - slot.granted
            self._spawn(self._report(slot.seq, slot.taken_at, feedback, sent, refused, out))
        self._nudge()

    async def _report(
        self,
        seq: str,
        taken_at: float,
        feedback: RateFeedback | None,
        sent: bool,
        refused: bool = False,
        out: float = 0.0,
    ) -> None:
        try:
            await self._report_now(seq, taken_at, feedback, sent, out)
        finally:
            if refused:
                self._learning -= 1
                if not self._learning:
                    self._learnt.set()

    async def _report_now(
        self,
        seq: str,
        taken_at: float,
        feedback: RateFeedback | None,
        sent: bool,
        out: float = 0.0,
    ) -> None:
        remaining, reset_after = readable(feedback)
        args: dict[str, Any] = {
            "member": seq,
            "taken_at": taken_at,
            "sent": sent,
            "refused": feedback is not None and feedback.rate_limited,
        }
        rate = self._rate
        if feedback is not None and not feedback.rate_limited and remaining is not None:
            # Its times from now: the script puts them on Redis's clock.
            cap = rules.cap_from(
                remaining,
                0,
                0.0,
                reset_after,
                feedback.max_wait,
                rate.requests,
                rate.period,
                out=out,
            )
            args["cap"] = {"remaining": cap.remaining, "until": cap.until, "refills": cap.refills}
        try:
            facts = await self._run(self._record, [*self._keys[:2], self._keys[4]], **args)
            await self._check_epoch(str(facts["epoch"]))
            if sent and feedback is not None:
                await self._learn(facts, seq, taken_at, feedback, remaining, reset_after)
        except Exception as exc:
            # Until Redis hears of it the slot stays held for its lease: safe, but long.
            if not _unreachable(exc):
                # A script that fails (a bug, a Redis that refuses scripts) fails again:
                # said loudly, and not retried.
                self._script_failed("report a request", exc)
                return
            # Told again (held a period from then) once Redis answers.
            logger.debug("could not report a request to the shared limiter: %r", exc)
            self._unreported.append((seq, sent))

    async def _learn(
        self,
        facts: dict[str, Any],
        seq: str,
        taken_at: float,
        feedback: RateFeedback,
        remaining: int | None,
        reset_after: float | None,
    ) -> None:
        """Run the rules on what the window held when the response came, and write
        back what they changed unless another process wrote first (then again, on
        what it wrote)."""
        now, held, answered = float(facts["now"]), int(facts["held"]), int(facts["answered"])
        epoch, number = seq.rsplit(":", 1)
        # Granted after this one: all still held, being younger.
        later = int(facts["seq"]) - int(number) if epoch == facts["epoch"] else 0
        window = rules.Window(
            held=held,
            in_flight=held - answered,
            ours=answered - int(facts["refused"]),
            before=max(0, held - 1 - later),
            aged=int(facts["aged"]),
        )
        text, version = str(facts["learned"]), int(facts["version"])
        rate, estimate = self._rate, None
        for _ in range(_APPLY_TRIES):
            learned = Learned.from_json(text) if text else rules.initial(rate, NEVER)
            before = learned.to_json()
            if feedback.rate_limited:
                rules.refused(learned, window, now, taken_at, feedback, rate)
            else:
                rules.answered(learned, taken_at)
                if remaining is not None:
                    estimate = rules.told(
                        learned,
                        window,
                        now,
                        remaining,
                        reset_after,
                        self._samples,
                        rate.requests,
                        rate.period,
                    )
            after = learned.to_json()
            if after == before:
                break
            reply = await self._run(self._apply, self._keys[:2], version=version, learned=after)
            if reply["written"]:
                break
            text, version = str(reply["learned"]), int(reply["version"])
        if estimate is not None:
            self._samples.append(estimate)

    async def _check_epoch(self, epoch: str) -> None:
        if self._epoch is not None and epoch != self._epoch:
            logger.warning(
                "the shared rate limiter's Redis lost its window (a restart?): "
                "re-adding the slots this process holds"
            )
            self._epoch = epoch
            await self._quietly("re-add this process's slots", self._reseed_slots())
        self._epoch = epoch

    async def _reseed_slots(self) -> None:
        now = time.monotonic()
        self._expire_held(now)
        holds = [round(expiry - now, 6) for expiry in self._held]
        # In flight: held a period past now, as if answered this instant.
        holds += [self._rate.period] * self._in_flight
        self._reseeds += 1
        await self._run(
            self._reseed, self._keys[:2], pid=f"{self._pid}:{self._reseeds}", holds=holds
        )

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_epoch())

    async def _watch_epoch(self) -> None:
        key = self._keys[1]
        while True:
            await asyncio.sleep(min(RESTART_NOTICE, self._rate.period / 8))
            self._expire_held(time.monotonic())
            if not self._held and not self._in_flight:
                return
            if self._fallback is not None:
                continue
            try:
                epoch = await self._redis.hget(key, "epoch")
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                continue
            if epoch is None or _text(epoch) != self._epoch:
                # Lost with a restart: the slots go back at once, under a new state.
                await self._look(self._restart_hold())

    async def _look(self, restarted: float | None) -> None:
        """Ask Redis for the budget without taking from it (``restarted``: seconds
        to hold grants if the state is gone; None: work it out)."""
        try:
            await self._quietly("look at the budget", self._look_at(restarted))
        finally:
            self._refreshing = False

    async def _look_at(self, restarted: float | None) -> None:
        hold = await self._maybe_restarted() if restarted is None else restarted
        reply = await self._run_acquire(0, hold)
        self._heard(reply)
        await self._check_epoch(str(reply["epoch"]))

    def _heard(self, reply: dict[str, Any]) -> None:
        self._last = (int(reply["free"]), float(reply["pace"]), int(reply["burst"]))
        self._last_at = time.monotonic()
        if self._unreported:
            late, self._unreported = self._unreported, []
            for seq, sent in late:
                self._spawn(self._report(seq, 0.0, None, sent))

    async def _leave_queue(self) -> None:
        await self._quietly("leave the queue", self._leave(keys=self._keys[2:], args=[self._pid]))

    async def _quietly(self, what: str, call: Awaitable[Any]) -> None:
        """Run a call whose failure the next one makes good: Redis away is expected
        (logged at DEBUG), anything else is a fault in the scripts (at WARNING)."""
        try:
            await call
        except Exception as exc:
            if _unreachable(exc):
                logger.debug("the shared limiter could not %s: %r", what, exc)
            else:
                self._script_failed(what, exc)

    def _script_failed(self, what: str, exc: BaseException) -> None:
        self.script_errors += 1
        logger.warning(
            "the shared rate limiter could not %s: %s: %s", what, type(exc).__name__, exc
        )

    def _give_back_grant(self, call: asyncio.Future[Any]) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        reply = call.result()
        epoch = str(reply["epoch"])
        for i in range(int(reply["granted"])):
            self._give_back(f"{epoch}:{int(reply['first']) + i}")

    def _give_back(self, seq: str) -> None:
        self._spawn(self._report(seq, 0.0, None, False))

    # -- helpers --------------------------------------------------------------------

    async def _run_acquire(
        self,
        want: int,
        hold: float,
        *,
        interactive: bool = False,
        lead: bool = False,
        keep: int = 0,
    ) -> dict[str, Any]:
        """The grant script, for ``want`` slots (0: only looking): for interactive
        calls, ahead of the queue if ``lead``; leaving ``keep`` free."""
        return await self._run(
            self._acquire,
            self._keys,
            # A process's two lines queue in Redis apart: each is served in its turn.
            pid=f"{self._pid}:i" if interactive else self._pid,
            want=want,
            interactive=interactive,
            lead=lead,
            lead_room=lead_room(self._rate.requests),
            keep=keep,
            keep_within=KEEP_WITHIN * self._rate.period,
            lease=self._lease,
            turn=self.TURN,
            slack=POLICY.queue_slack,
            hold=hold,
            initial=self._initial,
        )

    async def _run(self, script: Any, keys: list[str], **args: Any) -> dict[str, Any]:
        """Run one of the scripts: its arguments and its answer are JSON, by name."""
        period = self._rate.period
        common = {
            "limit": self._rate.requests,
            "period": period,
            # Keys outlive every slot: the longest hold (a lease, or a 429 gate and its
            # fading reservation) and then some.
            "ttl": max(self._lease, 4 * period) + period,
            "hold": self._restart_hold(),
        }
        reply = await script(keys=keys, args=[json.dumps({**common, **args})])
        answer: dict[str, Any] = json.loads(reply)
        return answer

    def _expire_held(self, now: float) -> None:
        while self._held and self._held[0] <= now:
            self._held.popleft()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class _FellBack(Exception):
    """Redis is away and the fallback took over: wait there instead."""


def _connect(redis_url: str, timeout: float) -> Redis | RedisCluster:
    """A client for ``redis_url``: one Redis, or with ``redis+cluster://`` (or
    ``rediss+cluster://``) a Redis Cluster, found from any of its nodes. The
    limiter's keys share one hash tag, so every script runs on one node."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # Once more on a fresh connection: a restarted Redis closes the old ones.
    # Not after a timeout: the script may have run, and would grant twice.
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    scheme, _, rest = redis_url.partition("://")
    if scheme.endswith("+cluster"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **options)
    from redis.asyncio import Redis

    return Redis.from_url(redis_url, **options)


def _uptime(info: dict[str, Any]) -> float:
    """Seconds the Redis has run, from ``INFO server``: a cluster answers for each
    node (by its address), and the youngest node counts."""
    if "uptime_in_seconds" in info:
        return float(info["uptime_in_seconds"])
    nodes = [float(v["uptime_in_seconds"]) for v in info.values() if isinstance(v, dict)]
    return min(nodes, default=math.inf)


def _unreachable(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
