"""The shared limiter's Lua scripts: every decision runs inside Redis, atomically,
on the Redis server's clock (``TIME``), so the hosts' clocks never matter.

Keys (all of one token share the hash tag ``{<token hash>}``, so they live on one
Redis Cluster slot; every write renews their expiry, so an idle token's keys
vanish on their own):

* ``slots``: a sorted set, one member a request, scored by when its slot frees:
  a lease while it is in flight, its answer plus one period once answered.
* ``state``: a hash of what the processes have learnt together: the 429 gate,
  someone else's share (a reservation that fades), the freshest
  ``X-RateLimit-Remaining`` as a cap, the pacing, and a sequence number.
* ``queue`` and ``due``: the processes waiting, by when they started waiting
  and by when they promised to ask again (a process that breaks its promise
  loses its place), so a slot goes to the process that has waited longest.
"""

from __future__ import annotations

# Shared by both scripts: the clock, the state, and what the window allows now.
_COMMON = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl = math.ceil(tonumber(ARGV[3]) * 1000)
-- The burst the user stated (RateLimit.burst), 0 if none: pacing from the start.
local stated = tonumber(ARGV[4])
-- Seconds every grant is held when the state is found gone (a restart), so that the
-- processes that held slots re-add them first.
local restart_hold = tonumber(ARGV[5])
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
  set('expired', 0)
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
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if expired > 0 then set('expired', num('expired', 0) + expired) end
local held = redis.call('ZCARD', KEYS[1])

local function reserved()
  local r, fs, fe = num('reserved', 0), num('fade_start', 0), num('fade_end', 0)
  if r <= 0 or now >= fe then return 0 end
  if now <= fs then return math.ceil(r) end
  return math.ceil(r * (fe - now) / (fe - fs) - 1e-9)
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
  local quiet = num('quiet', 2 * period)
  local plan_rate = limit / period
  local changed = num('changed', now)
  local burst = num('burst', 1)
  local stepped = false
  local most = limit
  if stated > 0 then most = stated end
  while pace > 0 and now - changed >= quiet do
    if pace < plan_rate then
      pace = math.min(plan_rate, pace / 0.85)
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
  -- At the plan's rate: a bucket does not refill as requests age.
  local back = math.floor((now - num('cap_at', now)) * limit / period)
  return math.max(0, num('cap_remaining', limit) - since + back)
end

local function touch()
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

#: Ask for up to ``want`` slots for process ``pid``.
#: KEYS: slots, state, queue, due. ARGV: limit, period, ttl, burst, restart hold, pid,
#: want, lease, turn, hold (seconds to hold grants if the state is gone). Returns
#: {granted, first seq, now, wait, epoch, free, pace, burst, held}.
ACQUIRE = (
    _COMMON
    + r"""
local pid, want = ARGV[6], tonumber(ARGV[7])
local lease, turn = tonumber(ARGV[8]), tonumber(ARGV[9])
-- A process that held slots before finds the state gone: Redis restarted (or the
-- token sat idle past the keys' life). Hold everyone a moment so the others re-add
-- the slots they hold before anything new goes.
local hold = tonumber(ARGV[10])
if fresh and hold > 0 then
  set('gate_until', now + hold)
end
relax()

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
  return {0, 0, f(now), '0', st['epoch'], free, f(pace), burst, held}
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
local soon = now + 2 * turn + 1
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
    redis.call('ZADD', KEYS[4], now + turn + 1, pid)
  end
  touch()
  return {grant, first, f(now), '0', st['epoch'], free - grant,
          f(pace), burst, held + grant}
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
    local rate = limit / period
    local at = num('cap_at', now)
    wait = math.min(wait, at + (math.floor((now - at) * rate) + 1) / rate - now)
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
redis.call('ZADD', KEYS[4], now + wait + turn + 1, pid)
touch()
return {0, 0, f(now), f(wait), st['epoch'], free, f(pace), burst, held}
"""
)

#: Report how a request ended.
#: KEYS: slots, state. ARGV: limit, period, ttl, burst, restart hold, slot (epoch:seq),
#: sent, status (0: no answer), remaining (-1: not said), reset_after (-1), retry_after
#: (-1), taken_at.
#: Returns {epoch, pace, burst}.
RECORD = (
    _COMMON
    + r"""
local member, sent, status = ARGV[6], ARGV[7] == '1', tonumber(ARGV[8])
local member_epoch, seq = string.match(member, '^(.*):(%d+)$')
seq = tonumber(seq)
if fresh then
  -- Redis lost the window (a restart): hold grants while the processes re-add theirs.
  set('gate_until', now + restart_hold)
end
local remaining = tonumber(ARGV[9])
local reset_after, retry_after = tonumber(ARGV[10]), tonumber(ARGV[11])
local taken_at = tonumber(ARGV[12])
if not sent then
  redis.call('ZREM', KEYS[1], member)
  touch()
  return {st['epoch'], f(num('pace', 0)), num('burst', limit)}
end
-- Held a period from now; re-added if a restart lost it.
redis.call('ZADD', KEYS[1], now + period, member)
held = redis.call('ZCARD', KEYS[1])
if status == 429 then
  local streak = num('streak', 0) + 1
  set('streak', streak)
  set('last_refused', now)
  local base = math.min(period / 4, 2 * period / limit)
  local backoff = math.min(period / 2, base * 2 ^ math.min(streak - 1, 16))
  local wait = retry_after
  if wait < 0 then wait = reset_after end
  if wait < 0 then
    wait = backoff
  elseif streak > 1 then
    wait = math.max(wait, backoff)
  end
  local gate = math.max(num('gate_until', 0), now + math.min(wait, 2 * period))
  set('gate_until', gate)
  -- What our own slots don't cover is not known to be free: let it out over a period.
  local still = redis.call('ZCOUNT', KEYS[1], '(' .. gate, '+inf')
  local unseen = limit - still
  if unseen > 0 and unseen >= reserved() then reserve(gate, gate + period, unseen) end
  -- The pacing: judged by requests sent under the current setting.
  local pace, burst = num('pace', 0), num('burst', limit)
  local relaxed = num('relaxed', 0) == 1
  local changed = num('changed', -1e18)
  set('tat', math.max(num('tat', now), gate))
  if taken_at >= changed then
    local quiet = num('quiet', 2 * period)
    if relaxed and now - changed < quiet then
      set('quiet', math.min(16 * period, quiet * 2))
    end
    local plan_rate = limit / period
    if pace <= 0 then
      pace, burst = plan_rate, 1
    elseif burst > 1 then
      burst = math.max(1, math.floor(burst / 2))
    else
      pace = math.max(plan_rate * 0.25, pace * 0.85)
    end
    set('pace', pace)
    set('burst', burst)
    set('changed', now)
    set('relaxed', 0)
  end
elseif status > 0 then
  if taken_at >= num('last_refused', -1e18) then set('streak', 0) end
  if remaining >= 0 then
    local small_bucket = reset_after >= 0
      and reset_after * limit / period < limit - remaining - held
    local proven = limit - remaining - held
    if proven > 0 and not small_bucket then
      -- Someone else's, beyond every process that shares this limiter.
      local others = math.min(limit, proven + 1 + math.floor(proven / 10))
      if others >= reserved() then reserve(now + period, now + 2 * period, others) end
    end
    if member_epoch == st['epoch'] and seq > num('cap_seq', -1) then
      set('cap_remaining', remaining)
      set('cap_seq', seq)
      set('cap_expired', num('expired', 0))
      set('cap_until', now + period)
      set('cap_at', now)
    end
  end
end
touch()
return {st['epoch'], f(num('pace', 0)), num('burst', limit)}
"""
)

#: Re-add the slots a process holds after Redis lost them (a restart).
#: KEYS: slots, state. ARGV: limit, period, ttl, burst, restart hold, pid, then seconds
#: each slot is still held for. Returns the number re-added.
RESEED = (
    _COMMON
    + r"""
local pid = ARGV[6]
if fresh then
  -- The first process back after a restart: hold grants while the others re-add theirs.
  set('gate_until', now + restart_hold)
end
for i = 7, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i]), 'r:' .. pid .. ':' .. (i - 6))
end
touch()
return #ARGV - 6
"""
)

#: A process leaves the queue (its last waiter was cancelled).
#: KEYS: queue, due. ARGV: pid.
LEAVE = r"""
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
