"""The shared limiter's Lua scripts: every decision runs inside Redis, atomically,
on the Redis server's clock (``TIME``), so the hosts' clocks never matter.

Guarantee: no window of a period holds more than the plan's requests across
every process, because a slot is taken in one atomic step before a request
leaves and freed a period after its answer (the in-process limiter's rule,
with Redis holding the slots). The rules that learn from the answers are the
in-process limiter's, with the numbers of ``_policy.POLICY`` passed in by
name; ``tests/test_limiter_parity.py`` checks that both decide alike.

Keys (all of one token share the hash tag ``{<token hash>}``, so they live on one
Redis Cluster slot; every write renews their expiry, so an idle token's keys
vanish on their own):

* ``slots``: a sorted set, one member a request, scored by when its slot frees:
  a lease while it is in flight, its answer plus one period once answered.
* ``state``: a hash of what the processes have learnt together: the 429 gate,
  someone else's share (a reservation that fades), the freshest
  ``X-RateLimit-Remaining`` as a cap, the pacing, and a sequence number.
* ``refused``: a sorted set of the slots whose answer was a 429, scored by when
  they leave the window (a 429 that finds most of the window ours tells a full
  window from a server that counts finely).
* ``queue`` and ``due``: the processes waiting, by when they started waiting
  and by when they promised to ask again (a process that breaks its promise
  loses its place), so a slot goes to the process that has waited longest.
"""

from __future__ import annotations

# Shared by the scripts: the arguments, the clock, the state, and what the window
# allows now. Every script takes one argument, a JSON object read by name, whose
# ``policy`` is the limiter's tuning (``_policy.LimiterPolicy``), and answers with one.
_COMMON = r"""
local A = cjson.decode(ARGV[1])
local P = A.policy
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, period = A.limit, A.period
local ttl = math.ceil(A.ttl * 1000)
-- The burst the user stated (RateLimit.burst), 0 if none: pacing from the start.
local stated = A.burst
-- Seconds every grant is held when the state is found gone (a restart), so that the
-- processes that held slots re-add them first.
local restart_hold = A.restart_hold
local raw = redis.call('HGETALL', KEYS[2])
local st = {}
for i = 1, #raw, 2 do st[raw[i]] = raw[i + 1] end
local function num(k, d)
  local v = st[k]
  if v then return tonumber(v) end
  return d
end
-- Times near 1.8e9 s need more than tostring's 14 digits to keep microseconds.
local function f(x)
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format('%d', x) end
  return string.format('%.6f', x)
end
local function set(k, v)
  if type(v) == 'number' then st[k] = f(v) else st[k] = v end
  redis.call('HSET', KEYS[2], k, st[k])
end
local fresh = st['epoch'] == nil
if fresh then
  set('epoch', string.format('%.6f', now))
  set('seq', 0)
end
if stated > 0 then
  if num('pace', 0) <= 0 then
    set('pace', limit / period)
    set('burst', stated)
    set('changed', now)
  elseif num('burst', limit) > stated then
    set('burst', stated)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])

-- Slots set aside for someone else's use of the token, at `at` (now if not given).
local function reserved(at)
  at = at or now
  local r, fs, fe = num('reserved', 0), num('fade_start', 0), num('fade_end', 0)
  if r <= 0 or at >= fe then return 0 end
  if at <= fs then return math.ceil(r) end
  return math.ceil(r * (fe - at) / (fe - fs) - 1e-9)
end

local function reserve(start, stop, slots)
  set('reserved', slots)
  set('fade_start', start)
  set('fade_end', math.max(stop, start + 1e-6))
end

-- The pacing: off (pace 0), or a GCRA at `pace` a second, `burst` at once.
local function relax()
  local pace = num('pace', 0)
  if pace <= 0 then return end
  local quiet = num('quiet', P.quiet_periods * period)
  local plan_rate = limit / period
  local changed = num('changed', now)
  local burst = num('burst', 1)
  local stepped = false
  local most = limit
  if stated > 0 then most = stated end
  while pace > 0 and now - changed >= quiet do
    if pace < plan_rate then
      local step = 1 / P.pace_backoff
      local refused = num('refused_pace', 0)
      if refused > 0 and pace < refused then
        -- Back up to a pace that was refused by half steps, not past it.
        step = math.min(math.sqrt(step), refused / pace)
      end
      pace = math.min(plan_rate, pace * step)
      if refused > 0 and pace >= refused * (1 - 1e-9) then set('refused_pace', 0) end
    elseif burst < most then
      burst = math.min(most, burst * 2)
    elseif stated == 0 then
      pace = 0
      burst = limit
    else
      break
    end
    changed = changed + quiet
    stepped = true
  end
  if stepped then
    set('pace', pace)
    set('burst', burst)
    set('changed', changed)
    set('relaxed', 1)
  end
end

local function cap_allows()
  local until_ = num('cap_until', 0)
  if until_ <= now then return limit end
  local since = num('seq', 0) - num('cap_seq', 0)
  -- At the plan's rate (a bucket does not refill as requests age), unless the server
  -- said all is back sooner than that could free it: then nothing before the reset.
  local back = 0
  if num('cap_refills', 1) == 1 then
    back = math.floor((now - num('cap_at', now)) * limit / period)
  end
  return math.max(0, num('cap_remaining', limit) - since + back)
end

local function touch()
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

#: Ask for up to ``want`` slots for process ``pid``.
#: KEYS: slots, state, queue, due. Arguments: the common ones, pid, want, lease, turn,
#: hold (seconds to hold grants if the state is gone). Answers: granted, first (its
#: sequence number), now, wait, epoch, free, pace, burst, held.
ACQUIRE = (
    _COMMON
    + r"""
local pid, want = A.pid, A.want
local lease, turn = A.lease, A.turn
local slack = P.queue_slack
-- A process that held slots before finds the state gone: Redis restarted (or the
-- token sat idle past the keys' life). Hold everyone a moment so the others re-add
-- the slots they hold before anything new goes.
local hold = A.hold
if fresh and hold > 0 then
  set('gate_until', now + hold)
end
relax()

local function answer(granted, first, wait, free_now, pace_now, burst_now, held_now)
  return cjson.encode({granted = granted, first = first, now = f(now), wait = f(wait),
                       epoch = st['epoch'], free = free_now, pace = f(pace_now),
                       burst = burst_now, held = held_now})
end

-- Waiters who broke their promise to ask again lose their place.
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, p in ipairs(gone) do
  if p ~= pid then
    redis.call('ZREM', KEYS[3], p)
    redis.call('ZREM', KEYS[4], p)
  end
end

local free = limit - held - reserved()
local gate = num('gate_until', 0)
if now < gate then free = 0 end
free = math.min(free, cap_allows())
local pace, burst = num('pace', 0), num('burst', limit)
local tat = num('tat', now)
if pace > 0 then
  local paced = math.floor((now - tat) * pace + burst + 1e-9)
  free = math.min(free, burst, paced)
end
free = math.max(0, free)

if want <= 0 then
  -- Only looking (after a restart): no place in the queue.
  touch()
  return answer(0, 0, 0, free, pace, burst, held)
end
local mine = redis.call('ZSCORE', KEYS[3], pid)
local before
if mine then
  before = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. mine)
else
  before = redis.call('ZRANGE', KEYS[3], 0, -1)
end
-- Ahead in turn: those waiting longer that are about to ask again. One asleep
-- until later (its promise is further off) does not keep a free slot idle.
local ahead = 0
local soon = now + 2 * turn + slack
for _, p in ipairs(before) do
  local due = tonumber(redis.call('ZSCORE', KEYS[4], p) or '0')
  if due <= soon then ahead = ahead + 1 end
end
local grant = math.min(want, free - ahead)
if grant > 0 then
  local first = num('seq', 0) + 1
  for i = 0, grant - 1 do
    redis.call('ZADD', KEYS[1], now + lease, st['epoch'] .. ':' .. (first + i))
  end
  set('seq', first + grant - 1)
  if pace > 0 then
    set('tat', math.max(tat, now) + grant / pace)
  end
  if grant >= want then
    redis.call('ZREM', KEYS[3], pid)
    redis.call('ZREM', KEYS[4], pid)
  else
    -- Served in part: to the back of the queue, behind whoever waits now.
    redis.call('ZADD', KEYS[3], now, pid)
    redis.call('ZADD', KEYS[4], now + turn + slack, pid)
  end
  touch()
  return answer(grant, first, 0, free - grant, pace, burst, held + grant)
end

-- Not now: when a grant can next succeed.
local wait = period
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #oldest > 0 then wait = math.min(wait, tonumber(oldest[2]) - now) end
if now < gate then wait = math.max(gate - now, 0) end
if free > 0 then
  -- Free slots, but others have waited longer: their turn first.
  wait = math.min(wait, turn)
else
  if num('cap_until', 0) > now then
    if num('cap_refills', 1) == 1 then
      local rate = limit / period
      local at = num('cap_at', now)
      wait = math.min(wait, at + (math.floor((now - at) * rate) + 1) / rate - now)
    else
      wait = math.min(wait, num('cap_until', 0) - now)
    end
  end
  if pace > 0 then
    wait = math.min(wait, math.max(0, tat - (burst - 1) / pace - now))
  end
  local r = reserved()
  if r > 0 then
    local fs, fe, rr = num('fade_start', 0), num('fade_end', 0), num('reserved', 0)
    if now < fs then
      wait = math.min(wait, fs - now)
    else
      wait = math.min(wait, fe - (fe - fs) * (r - 1) / rr - now)
    end
  end
  if now < gate then wait = math.max(wait, gate - now) end
end
wait = math.max(wait, 0.001)
redis.call('ZADD', KEYS[3], 'NX', now, pid)
redis.call('ZADD', KEYS[4], now + wait + turn + slack, pid)
touch()
return answer(0, 0, wait, free, pace, burst, held)
"""
)

#: Report how a request ended.
#: KEYS: slots, state, refused. Arguments: the common ones, member (the slot, epoch:seq),
#: sent, status (0: no answer), remaining, reset_after, retry_after (each left out when
#: not said), taken_at. Answers: epoch, pace, burst.
RECORD = (
    _COMMON
    + r"""
local member, sent, status = A.member, A.sent, A.status
local member_epoch, seq = string.match(member, '^(.*):(%d+)$')
seq = tonumber(seq)
if fresh then
  -- Redis lost the window (a restart): hold grants while the processes re-add theirs.
  set('gate_until', now + restart_hold)
end
local remaining, reset_after, retry_after = A.remaining, A.reset_after, A.retry_after
local taken_at = A.taken_at
local function answer()
  return cjson.encode({epoch = st['epoch'], pace = f(num('pace', 0)),
                       burst = num('burst', limit)})
end
if not sent then
  redis.call('ZREM', KEYS[1], member)
  touch()
  return answer()
end
-- Held a period from now; re-added if a restart lost it.
redis.call('ZADD', KEYS[1], now + period, member)
held = redis.call('ZCARD', KEYS[1])
if status == 429 then
  local streak = num('streak', 0) + 1
  set('streak', streak)
  set('last_refused', now)
  local base = math.min(P.refusal_wait_most_share * period,
                         P.refusal_wait_intervals * period / limit)
  local backoff = math.min(P.refusal_backoff_most_share * period,
                           base * 2 ^ math.min(streak - 1, 16))
  local wait = retry_after
  if wait == nil then wait = reset_after end
  if wait == nil then
    wait = backoff
  elseif streak > 1 then
    wait = math.max(wait, backoff)
  end
  local gate = math.max(num('gate_until', 0), now + math.min(wait, P.gate_most_periods * period))
  set('gate_until', gate)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + period, member)
  -- Refused with most of the budget let in to us, and a tenth or more not: the window
  -- is full (counting finely refuses a burst early) and what ours do not account for
  -- is someone else's. Ours: answered within the period (in flight, a slot is held
  -- for a lease, longer than a period), less the refused.
  local answered = redis.call('ZCOUNT', KEYS[1], '(' .. now, now + period)
  local ours = answered - redis.call('ZCARD', KEYS[3])
  local others = limit - (held - answered) - ours
  local share = nil
  if ours / limit < P.full_window_ours or others / limit < P.full_window_others then
    -- What our own slots don't cover is not known to be free: let it out over a period.
    local still = redis.call('ZCOUNT', KEYS[1], '(' .. gate, '+inf')
    local unseen = limit - still
    if unseen > 0 and unseen >= reserved(gate) then reserve(gate, gate + period, unseen) end
  else
    -- It frees no sooner than ours age out: held a period, fading over the next.
    others = math.min(limit, others + 1 + math.floor(others * P.others_margin))
    if others >= reserved(gate) then reserve(gate + period, gate + 2 * period, others) end
    share = ours
  end
  -- The pacing: judged by requests sent under the current setting.
  local pace, burst = num('pace', 0), num('burst', limit)
  local relaxed = num('relaxed', 0) == 1
  local changed = num('changed', -1e18)
  set('tat', math.max(num('tat', now), gate))
  if taken_at >= changed then
    local quiet = num('quiet', P.quiet_periods * period)
    if relaxed and now - changed < quiet then
      set('quiet', math.min(P.quiet_most_periods * period, quiet * 2))
    end
    local plan_rate = limit / period
    if burst == 1 then set('refused_pace', pace) else set('refused_pace', 0) end
    if pace <= 0 then
      pace, burst = plan_rate, 1
    elseif burst > 1 then
      burst = math.max(1, math.floor(burst / 2))
    else
      pace = math.max(plan_rate * P.pace_floor, pace * P.pace_backoff)
    end
    if share ~= nil then
      pace = math.max(plan_rate * P.pace_floor, math.min(pace, share / period))
    end
    set('pace', pace)
    set('burst', burst)
    set('changed', now)
    set('relaxed', 0)
  end
elseif status > 0 then
  if taken_at >= num('last_refused', -1e18) then set('streak', 0) end
  if remaining ~= nil then
    local small_bucket = reset_after ~= nil
      and reset_after * limit / period < limit - remaining - held
    local proven = limit - remaining - held
    if proven > 0 and not small_bucket then
      -- Someone else's, beyond every process that shares this limiter.
      local others = math.min(limit, proven + 1 + math.floor(proven * P.others_margin))
      if others >= reserved() then reserve(now + period, now + 2 * period, others) end
    end
    if member_epoch == st['epoch'] and seq > num('cap_seq', -1) then
      set('cap_remaining', remaining)
      set('cap_seq', seq)
      -- A slot's worth of slack either way: headers round Remaining down, Reset up.
      if reset_after ~= nil and reset_after * limit / period < limit - remaining - 1 then
        -- All back sooner than the plan's rate could free it: back at once, then.
        set('cap_until', now + reset_after)
        set('cap_refills', 0)
      else
        set('cap_until', now + period)
        set('cap_refills', 1)
      end
      set('cap_at', now)
    end
  end
end
touch()
return answer()
"""
)

#: Re-add the slots a process holds after Redis lost them (a restart).
#: KEYS: slots, state. Arguments: the common ones, pid, holds (seconds each slot is
#: still held for). Answers: added.
RESEED = (
    _COMMON
    + r"""
local pid = A.pid
if fresh then
  -- The first process back after a restart: hold grants while the others re-add theirs.
  set('gate_until', now + restart_hold)
end
for i, held_for in ipairs(A.holds) do
  redis.call('ZADD', KEYS[1], now + held_for, 'r:' .. pid .. ':' .. i)
end
touch()
return cjson.encode({added = #A.holds})
"""
)

#: A process leaves the queue (its last waiter was cancelled).
#: KEYS: queue, due. ARGV: pid.
LEAVE = r"""
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
