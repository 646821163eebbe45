"""The shared limiter's Lua scripts: what must be atomic across processes, run
inside Redis on the Redis server's clock (``TIME``), so the hosts' clocks never
matter.

Guarantee: no window of a period holds more than the plan's requests across
every process, because a slot is taken in one atomic step before a request
leaves and freed a period after its response (the in-process limiter's rule,
with Redis holding the slots).

The scripts decide nothing the responses teach: that is ``_rules.py``, run by
the process that got the response, whose result is written back here only if
no other process changed it meanwhile (``APPLY``). What they do is read the
constraints (``EVALUATE``, the Lua mirror of ``_constraints.evaluate``, held to
it by ``tests/test_limiter_parity.py``), take and free slots, and keep the
queue. Every script takes one JSON argument read by name, and answers with one.

Keys (all of one token share the hash tag ``{<token hash>}``, so they live on one
Redis Cluster slot; every write renews their expiry, so an idle token's keys
vanish on their own):

* ``slots``: a sorted set, one member a request (``epoch:seq``), scored by when
  its slot frees: a lease while it is in flight, its response plus one period
  once answered. A freed slot stays a period more (held only while its score is
  ahead of now): a response counts those that freed while it was on its way,
  which the server may have counted before it.
* ``state``: a hash: ``learned`` and its ``version`` (``_constraints.Learned``
  as JSON), the freshest ``cap``, the pacing's ``tat``, the grant counter
  ``seq``, the ``epoch`` (new after a restart) and a restart's ``hold_until``.
* ``refused``: the slots whose response was a 429, scored like ``slots``.
* ``queue`` and ``due``: the processes waiting, by when they started waiting
  and by when they promised to ask again (a process that breaks its promise
  loses its place), so a slot goes to the process that has waited longest.
"""

from __future__ import annotations

# The argument, the clock, the state hash (created with a new epoch if gone).
_COMMON = r"""
local A = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, period = A.limit, A.period
local raw = redis.call('HGETALL', KEYS[2])
local st = {}
for i = 1, #raw, 2 do st[raw[i]] = raw[i + 1] end
local function num(k, d)
  local v = st[k]
  if v then return tonumber(v) end
  return d
end
-- Times near 1.8e9 s need more than cjson's 14 digits to keep microseconds.
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
  -- Redis lost the window (a restart): hold grants while the processes re-add theirs.
  if A.hold > 0 then set('hold_until', now + A.hold) end
end
local function touch()
  local ttl = math.ceil(A.ttl * 1000)
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# _constraints.evaluate, read the same way: what the constraints but the window's own
# slots allow now, and when each may next allow more.
_EVALUATE = r"""
local learned = A.initial
if st['learned'] then learned = cjson.decode(st['learned']) end
local cap = nil
if st['cap'] then cap = cjson.decode(st['cap']) end
local function reserved(at)
  local slots, s, e = learned.reserve[1], learned.reserve[2], learned.reserve[3]
  if slots <= 0 or at >= e then return 0 end
  if at <= s then return math.ceil(slots) end
  return math.ceil(slots * (e - at) / (e - s) - 1e-9)
end
local function pacing_now(at)
  local p = learned.pacing
  if not p then return 0, 0, limit end
  local index = 1
  for i = 2, #p.steps do
    if p.steps[i][1] > at then break end
    index = i
  end
  return index, p.steps[index][2], p.steps[index][3]
end
local function evaluate(held, next_seq, tat)
  local gate = learned.gate
  if now < gate then return 0, {gate} end
  local r = reserved(now)
  tat = math.max(tat, gate)
  local free, times = limit - held - r, {}
  if cap and now < cap['until'] then
    local since = now - cap.at
    local after = next_seq - cap.seq - 1
    local refilled, next_at = 0, cap['until']
    if cap.refills then
      local rate = limit / period
      refilled = math.floor(since * rate)
      next_at = math.min(next_at, cap.at + (refilled + 1) / rate)
    end
    local taken = math.ceil(r * since / period - 1e-9)
    free = math.min(free, math.max(0, cap.remaining - after + refilled - taken))
    times[#times + 1] = next_at
  end
  if learned.pacing then
    local steps = learned.pacing.steps
    local index, pace, burst = pacing_now(now)
    local next_at = nil
    if index < #steps then next_at = steps[index + 1][1] end
    if pace > 0 then
      local paced = math.max(0, math.min(burst, math.floor((now - tat) * pace + burst + 1e-9)))
      free = math.min(free, paced)
      if paced <= 0 then
        local at = tat - (burst - 1) / pace
        if next_at == nil or at < next_at then next_at = at end
      end
    end
    if next_at then times[#times + 1] = next_at end
  end
  if r > 0 then
    local slots, s, e = learned.reserve[1], learned.reserve[2], learned.reserve[3]
    if now < s then times[#times + 1] = s else times[#times + 1] = e - (e - s) * (r - 1) / slots end
  end
  return math.max(0, free), times
end
"""

#: Ask for up to ``want`` slots for process ``pid`` (0: only looking).
#: KEYS: slots, state, queue, due, refused (unused), interactive (when interactive
#: grants free, for their share). Arguments: limit, period, ttl, hold, initial (the
#: learned state before any), pid, want, lease, turn, slack, interactive (the slots are
#: for interactive calls), lead (they may go ahead of the queue), lead_room (how many
#: interactive grants a period may lead), keep (free slots to leave), keep_within
#: (seconds: a slot that frees this soon counts as one left free). Answers: granted,
#: first (its sequence number), now, wait, epoch, free, pace, burst, held, led
#: (interactive grants within the last period).
ACQUIRE = (
    _COMMON
    + _EVALUATE
    + r"""
local pid, want, lease, turn = A.pid, A.want, A.lease, A.turn
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local led = redis.call('ZCARD', KEYS[6])
-- Interactive calls lead, ahead of every process's bulk work, within the room the
-- process was given, counted here against every process's interactive grants.
local lead = A.lead and led < (A.lead_room or 0)
if lead then want = math.min(want, A.lead_room - led) end
local queued_at = now
if lead then queued_at = 0 end
local held = redis.call('ZCOUNT', KEYS[1], '(' .. f(now), '+inf')
local tat = num('tat', now)
local free, times = evaluate(held, num('seq', 0) + 1, tat)
local hold_until = num('hold_until', 0)
if now < hold_until then free, times = 0, {hold_until} end
local _, pace, burst = pacing_now(now)

local function answer(granted, first, wait, free_now, held_now)
  return cjson.encode({granted = granted, first = first, now = f(now), wait = f(wait),
                       epoch = st['epoch'], free = free_now, pace = f(pace),
                       burst = burst, held = held_now, led = led})
end

-- Waiters who broke their promise to ask again lose their place.
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  if p ~= pid then
    redis.call('ZREM', KEYS[3], p)
    redis.call('ZREM', KEYS[4], p)
  end
end
if want <= 0 then
  touch()
  return answer(0, 0, 0, free, held)
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
local soon = now + 2 * turn + A.slack
if not lead then
  for _, p in ipairs(before) do
    -- An interactive call that leads is ahead even while it sleeps until a slot frees.
    if tonumber(redis.call('ZSCORE', KEYS[3], p)) == 0
        or tonumber(redis.call('ZSCORE', KEYS[4], p) or '0') <= soon then
      ahead = ahead + 1
    end
  end
end
-- Slots left to interactive calls: free now, or freeing within keep_within while the
-- window's slots are what limits the grants (not pacing, a gate or a cap).
local keep, within = A.keep or 0, A.keep_within or 0
if keep > 0 and free >= limit - held - reserved(now) then
  local freeing = redis.call('ZCOUNT', KEYS[1], '(' .. f(now), f(now + within))
  keep = math.max(0, keep - freeing)
end
local grant = math.min(want, free - ahead - keep)
if grant > 0 then
  local first = num('seq', 0) + 1
  for i = 0, grant - 1 do
    redis.call('ZADD', KEYS[1], now + lease, st['epoch'] .. ':' .. (first + i))
    if A.interactive then
      redis.call('ZADD', KEYS[6], now + period, st['epoch'] .. ':' .. (first + i))
      led = led + 1
    end
  end
  set('seq', first + grant - 1)
  if pace > 0 then set('tat', math.max(tat, learned.gate, now) + grant / pace) end
  if grant >= want then
    redis.call('ZREM', KEYS[3], pid)
    redis.call('ZREM', KEYS[4], pid)
  else
    -- Served in part: to the back of the queue (its line's), behind whoever waits now.
    redis.call('ZADD', KEYS[3], queued_at, pid)
    redis.call('ZADD', KEYS[4], now + turn + A.slack, pid)
  end
  touch()
  return answer(grant, first, 0, free - grant, held + grant)
end

-- Not now: when a grant can next succeed (free slots, but others waited longer:
-- their turn first). Slots left free for interactive calls are not free to this
-- ask: it waits for a slot to free or come within keep_within, or for the
-- interactive grants to age (fewer kept), not a turn, or it would ask again every
-- few milliseconds.
local wait = period
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. f(now), '+inf',
                          'WITHSCORES', 'LIMIT', 0, 1)
if #oldest > 0 then wait = math.min(wait, tonumber(oldest[2]) - now) end
if keep > 0 then
  local aging = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if #aging > 0 then wait = math.min(wait, tonumber(aging[2]) - now) end
  local reach = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. f(now + within), '+inf',
                           'WITHSCORES', 'LIMIT', 0, 1)
  if #reach > 0 then wait = math.min(wait, tonumber(reach[2]) - within - now) end
end
if free - keep > 0 then
  wait = math.min(wait, turn)
else
  for _, at in ipairs(times) do
    if at > now then wait = math.min(wait, at - now) end
  end
end
wait = math.max(wait, 0.001)
if lead or tonumber(redis.call('ZSCORE', KEYS[3], pid) or '1') == 0 then
  -- A lead taken or given up moves the entry: only a leading ask waits ahead of all.
  redis.call('ZADD', KEYS[3], queued_at, pid)
else
  redis.call('ZADD', KEYS[3], 'NX', queued_at, pid)
end
redis.call('ZADD', KEYS[4], now + wait + turn + A.slack, pid)
touch()
return answer(0, 0, wait, free, held)
"""
)

#: Report how a request ended, and what the window held then.
#: KEYS: slots, state, refused. Arguments: limit, period, ttl, hold, member (the slot,
#: epoch:seq), taken_at (when it was granted), sent, refused (a 429), cap (the cap its
#: Remaining sets, its times from now; left out if none). Answers: epoch, now, held,
#: answered, aged (slots freed since it was granted), refused, seq, learned, version.
RECORD = (
    _COMMON
    + r"""
local member = A.member
local member_epoch, seq = string.match(member, '^(.*):(%d+)$')
seq = tonumber(seq)
local function answer(facts)
  facts.epoch = st['epoch']
  return cjson.encode(facts)
end
if not A.sent then
  redis.call('ZREM', KEYS[1], member)
  touch()
  return answer({})
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local aged = redis.call('ZCOUNT', KEYS[1], '(' .. f(A.taken_at), f(now))
-- Held a period from now; re-added if a restart lost it.
redis.call('ZADD', KEYS[1], now + period, member)
if A.refused then redis.call('ZADD', KEYS[3], now + period, member) end
local cap = A.cap
if cap and member_epoch == st['epoch'] and seq > num('cap_seq', -1) then
  set('cap', string.format('{"remaining":%d,"seq":%d,"at":%s,"until":%s,"refills":%s}',
    cap.remaining, seq, f(now), f(now + cap['until']), tostring(cap.refills)))
  set('cap_seq', seq)
end
touch()
return answer({now = f(now), held = redis.call('ZCOUNT', KEYS[1], '(' .. f(now), '+inf'),
               answered = redis.call('ZCOUNT', KEYS[1], '(' .. f(now), f(now + period)),
               aged = aged,
               refused = redis.call('ZCARD', KEYS[3]), seq = num('seq', 0),
               learned = st['learned'] or '', version = num('version', 0)})
"""
)

#: Write back what the rules learnt, if no other process wrote since ``version``.
#: KEYS: slots, state. Arguments: limit, period, ttl, hold, version, learned.
#: Answers: written; if not, the learned and version now.
APPLY = (
    _COMMON
    + r"""
if num('version', 0) == A.version then
  set('learned', A.learned)
  set('version', A.version + 1)
  touch()
  return cjson.encode({written = true})
end
return cjson.encode({written = false, learned = st['learned'] or '',
                     version = num('version', 0)})
"""
)

#: Re-add the slots a process holds after Redis lost them (a restart).
#: KEYS: slots, state. Arguments: limit, period, ttl, hold, pid, holds (seconds
#: each slot is still held for). Answers: added.
RESEED = (
    _COMMON
    + r"""
for i, held_for in ipairs(A.holds) do
  redis.call('ZADD', KEYS[1], now + held_for, 'r:' .. A.pid .. ':' .. i)
end
touch()
return cjson.encode({added = #A.holds})
"""
)

#: A process leaves the queue (its last waiter was cancelled).
#: KEYS: queue, due. ARGV: pid.
LEAVE = r"""
for _, member in ipairs({ARGV[1], ARGV[1] .. ':i'}) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
return 1
"""
