"""Lua scripts of the Redis backend: each broker or store step is one atomic script.

Every script gets ``KEYS[1] = {P}:queues``, which routes it to the node that
owns the prefix's slot on Redis Cluster, and ``ARGV[1] = {P}``, the hash tag
from which it builds the other key names (see
:mod:`sluicegate.backends.redis_keys`). Declaring only one key works because
all keys of a prefix share its slot. The current time comes from the caller
as an argument, never from Redis ``TIME``, so tests control the clock.

Times travel as strings written by Python and are stored unchanged; Lua
compares them as numbers but never formats one, because Lua's number
formatting keeps only 14 significant digits.

Cost: on Redis 7.0.15 a ``redis.call`` takes about 3,000 CPU instructions, plus
several hundred for each argument and 1,500 to 3,000 for each value of its
reply, because each value is converted between Lua and Redis (callgrind).
Reading fewer fields therefore saves about as much as making fewer calls. A
float score in a reply (ZSCORE, ZPOPMIN) and a Lua number passed as an argument
cost more, because Redis formats each with ``%.17g``.
"""

from __future__ import annotations

#: Helpers shared by every script: key names, ready sets by priority, rates.
COMMON = """
local P = ARGV[1]
local function qkey(queue, part) return P .. ':q:' .. queue .. ':' .. part end
local function mkey(id) return P .. ':m:' .. id end
local function jkey(id) return P .. ':j:' .. id end
local function idem_key(key) return P .. ':idem:' .. key end

local function levels(queue)
  return redis.call('ZRANGE', qkey(queue, 'levels'), 0, -1)
end

-- Append two values to an array: a field and its value, or a score and its member.
local function push_pair(array, first, second)
  local n = #array
  array[n + 1], array[n + 2] = first, second
end

-- Format an integer-valued Lua number for redis.call. Redis 7.0 formats a number
-- argument with '%.17g', which costs about 1.5 times the instructions of this '%d'
-- (callgrind, Redis 7.0.15).
local function integer(number) return string.format('%d', number) end

-- Run one command with many trailing values, 1,000 at a time, because Lua's unpack
-- fails beyond about 8,000 values. key is the first argument, or nil for none (DEL).
local function call_chunked(command, key, values)
  for first = 1, #values, 1000 do
    local last = math.min(first + 999, #values)
    if key then
      redis.call(command, key, unpack(values, first, last))
    else
      redis.call(command, unpack(values, first, last))
    end
  end
end

-- Return the finite number that a stored text holds, or nil. Lua's tonumber also reads
-- 'inf', 'nan' and hexadecimal, which ZADD or Python's float() reject.
local function finite(text)
  if type(text) ~= 'string' or string.find(text, '[xX]') then return nil end
  local number = tonumber(text)
  if number == nil or number ~= number or number == math.huge or number == -math.huge then
    return nil
  end
  return number
end

-- Return the non-negative integer that a stored text holds, or nil. Only plain
-- digits without a leading zero pass, as HINCRBY requires.
local function counter(text)
  if type(text) ~= 'string' or #text > 15 then return nil end
  if text ~= '0' and not string.match(text, '^[1-9]%d*$') then return nil end
  return tonumber(text)
end

-- Read fields of a hash, or return nil and the error when the key holds another type,
-- which would make HMGET fail the whole script.
local function read_hash(key, ...)
  local reply = redis.pcall('HMGET', key, ...)
  if reply.err then return nil, reply.err end
  return reply
end

-- Return why a message field cannot be used: it is missing, or parse rejects it.
-- Returns nil for a usable field.
local function field_problem(name, value, parse, expected)
  if not value then return 'corrupt message: ' .. name .. ' is missing' end
  if parse and parse(value) == nil then
    return 'corrupt message: ' .. name .. ' is not ' .. expected .. ' (' ..
      string.sub(value, 1, 40) .. ')'
  end
  return nil
end

local function make_ready(queue, id, priority, order_at)
  redis.call('ZADD', qkey(queue, 'ready:' .. priority), order_at, id)
  redis.call('ZADD', qkey(queue, 'levels'), -tonumber(priority), priority)
end

local function unready(queue, id, priority)
  local key = qkey(queue, 'ready:' .. priority)
  local removed = redis.call('ZREM', key, id)
  if removed == 1 and redis.call('ZCARD', key) == 0 then
    redis.call('ZREM', qkey(queue, 'levels'), priority)
  end
  return removed
end

local function ready_count(queue)
  local count = 0
  for _, priority in ipairs(levels(queue)) do
    count = count + redis.call('ZCARD', qkey(queue, 'ready:' .. priority))
  end
  return count
end

local function queue_length(queue)
  return ready_count(queue) + redis.call('ZCARD', qkey(queue, 'delayed'))
    + redis.call('ZCARD', qkey(queue, 'leased'))
end

-- Return the earlier of two times; a missing or corrupt second time is ignored.
local function earlier(first, second)
  local candidate = finite(second)
  if candidate == nil then return first end
  if first == nil or candidate < tonumber(first) then return second end
  return first
end

-- The time the oldest ready message became ready, counting due delayed ones.
local function oldest_ready(queue, now)
  local oldest = nil
  for _, priority in ipairs(levels(queue)) do
    local first = redis.call('ZRANGE', qkey(queue, 'ready:' .. priority), 0, 0, 'WITHSCORES')
    oldest = earlier(oldest, first[2])
  end
  local due = redis.call('ZRANGEBYSCORE', qkey(queue, 'delayed'), '-inf', now,
    'WITHSCORES', 'LIMIT', 0, 1)
  return earlier(oldest, due[2])
end

local function rate_row(queue)
  return redis.call('HMGET', qkey(queue, 'meta'), 'bucket', 'enqueued_now',
    'enqueued_before', 'completed_now', 'completed_before')
end

-- Add to the counts of the current rate bucket, shifting it to "before" on a new bucket.
-- Within one bucket, which lasts 30 seconds, it is an HGET and an HINCRBY.
local function count_rate(queue, bucket, enqueued, completed)
  local meta = qkey(queue, 'meta')
  if tonumber(redis.call('HGET', meta, 'bucket')) == bucket then
    if enqueued > 0 then redis.call('HINCRBY', meta, 'enqueued_now', integer(enqueued)) end
    if completed > 0 then redis.call('HINCRBY', meta, 'completed_now', integer(completed)) end
    return
  end
  local row = rate_row(queue)
  local current = tonumber(row[1]) or 0
  local en, eb = tonumber(row[2]) or 0, tonumber(row[3]) or 0
  local cn, cb = tonumber(row[4]) or 0, tonumber(row[5]) or 0
  if current == bucket - 1 then
    eb, cb, en, cn = en, cn, 0, 0
  elseif current ~= bucket then
    eb, cb, en, cn = 0, 0, 0, 0
  end
  redis.call('HSET', qkey(queue, 'meta'), 'bucket', bucket, 'enqueued_now', en + enqueued,
    'enqueued_before', eb, 'completed_now', cn + completed, 'completed_before', cb)
end

-- Give a final job record its retention: a Redis expiry, and an entry for purge_expired.
local function retain(id, expires_at, retention_ms)
  local job = jkey(id)
  redis.call('ZADD', P .. ':expiring', expires_at, id)
  redis.call('PEXPIRE', job, retention_ms)
  local key = redis.call('HGET', job, 'idempotency_key')
  if key and redis.call('GET', idem_key(key)) == id then
    redis.call('PEXPIRE', idem_key(key), retention_ms)
  end
end

-- Undo retain: the record lives until it is final again.
local function unretain(id)
  local job = jkey(id)
  redis.call('ZREM', P .. ':expiring', id)
  redis.call('PERSIST', job)
  redis.call('HDEL', job, 'finished_at', 'expires_at')
  local key = redis.call('HGET', job, 'idempotency_key')
  if key and redis.call('GET', idem_key(key)) == id then
    redis.call('PERSIST', idem_key(key))
  end
end
"""

#: Create messages (and job records) in one queue, all or none, under the bound.
#: ARGV: tag, now, bucket, queue, max_length, max_wait ('' for none), declared, count,
#: then per message: id, body, priority, ready_at, enqueued_at, task ('' for a plain
#: message), idempotency key ('' for none). declared is '1' to store the bounds for
#: stats, or '' to keep the stored ones.
#: Returns {'ok', {id, created, ...}} or {'full', reason, excess, rate row}.
ENQUEUE = (
    COMMON
    + """
local now, bucket, queue = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local max_length, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6])
local count = tonumber(ARGV[8])
local results, fresh, seen = {}, {}, {}
for i = 0, count - 1 do
  local base = 9 + i * 7
  local id, key = ARGV[base], ARGV[base + 6]
  local existing = nil
  if redis.call('EXISTS', mkey(id), jkey(id)) > 0 then
    -- A call retried after a lost reply: its first attempt created this id.
    table.insert(results, id)
    table.insert(results, 1)
  else
    if key ~= '' then
      existing = seen[key]
      if existing == nil then
        local holder = redis.call('GET', idem_key(key))
        if holder then
          local record = redis.call('HMGET', jkey(holder), 'state', 'expires_at')
          if record[1] and (not record[2] or tonumber(record[2]) > now) then
            existing = holder
          end
        end
      end
    end
    if existing ~= nil then
      table.insert(results, existing)
      table.insert(results, 0)
    else
      if key ~= '' then seen[key] = id end
      table.insert(results, id)
      table.insert(results, 1)
      table.insert(fresh, base)
    end
  end
end
if #fresh == 0 then return {'ok', results} end

local length = queue_length(queue)
if length + #fresh > max_length then
  return {'full', 'max_length', length + #fresh - max_length, rate_row(queue)}
end
if max_wait then
  local oldest = oldest_ready(queue, ARGV[2])
  if oldest and now - tonumber(oldest) > max_wait then
    return {'full', 'max_wait', length, rate_row(queue)}
  end
end

redis.call('SADD', KEYS[1], queue)
-- Bounds that are not declared, such as a webhook delivery's, leave the stored ones unchanged.
if ARGV[7] == '1' then
  if max_wait then
    redis.call('HSET', qkey(queue, 'meta'), 'max_length', ARGV[5], 'max_wait', ARGV[6])
  else
    redis.call('HSET', qkey(queue, 'meta'), 'max_length', ARGV[5])
    redis.call('HDEL', qkey(queue, 'meta'), 'max_wait')
  end
end
local ready_now = false
for _, base in ipairs(fresh) do
  local id, body, priority = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local ready_at, enqueued_at = ARGV[base + 3], ARGV[base + 4]
  local task, key = ARGV[base + 5], ARGV[base + 6]
  redis.call('HSET', mkey(id), 'queue', queue, 'body', body, 'priority', priority,
    'order_at', ready_at, 'enqueued_at', enqueued_at, 'fence', 0, 'deliveries', 0)
  if tonumber(ready_at) <= now then
    make_ready(queue, id, priority, ready_at)
    ready_now = true
  else
    redis.call('ZADD', qkey(queue, 'delayed'), ready_at, id)
  end
  if task ~= '' then
    redis.call('HSET', jkey(id), 'task', task, 'queue', queue, 'state', 'queued',
      'attempts', 0, 'created_at', enqueued_at, 'eta', ready_at, 'cancel_requested', 0,
      'version', 1)
    if key ~= '' then
      -- Inside this script the check above and this claim are one atomic step.
      redis.call('HSET', jkey(id), 'idempotency_key', key)
      redis.call('SET', idem_key(key), id)
    end
  end
end
count_rate(queue, bucket, #fresh, 0)
if ready_now then redis.call('PUBLISH', P .. ':wake', queue) end
return {'ok', results}
"""
)

#: Settle deliveries and reserve new ones in one step; see RedisBackend.exchange.
#: ARGV: tag, now, bucket, token ('' for no reply cache), lease_until, worker, limit,
#: queue count, the queues, and the settlement count. Then come 16 values per
#: settlement: id, queue, fence, action, ready_at (of a delayed retry, else ''),
#: reason, has_job, state, result, error_type, error_message, error_traceback, note,
#: expires_at, retention_ms, count_attempt. The optional values (result,
#: error_traceback, note) are '' for none. Otherwise they carry one leading '=', so
#: that an empty value stays distinct from none.
#: Returns {settled flags, deliveries (7 fields each), expired leases (4 fields each),
#: rejected messages (4 fields each: id, queue, 'dead' or 'removed', reason)}.
#:
#: Every field read from a message hash is checked before the script writes what
#: depends on it, because Redis keeps the writes of a script that fails partway. A
#: message with a missing or corrupt field goes to the dead-letter queue with the
#: reason, and an id whose hash is missing (or is no hash) leaves its set.
EXCHANGE = (
    COMMON
    + """
local now_text, bucket, token = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = tonumber(now_text)
local lease_until, worker, limit = ARGV[5], ARGV[6], tonumber(ARGV[7])

-- The reply of a retried call whose first attempt landed. Each delivery of that
-- attempt whose message is still leased under its fence gets its lease renewed until
-- this attempt's lease_until, so the caller can trust the lease_until it computes.
-- A delivery that another call took back after its lease expired is left out.
local function replay(reply)
  local old, renewed = reply[2], {}
  for n = 1, #old, 7 do
    local id, queue, fence = old[n], old[n + 1], old[n + 2]
    local leased = redis.call('ZSCORE', qkey(queue, 'leased'), id)
    if leased and tonumber(redis.pcall('HGET', mkey(id), 'fence')) == fence then
      redis.call('ZADD', qkey(queue, 'leased'), 'XX', lease_until, id)
      for k = 0, 6 do renewed[#renewed + 1] = old[n + k] end
    end
  end
  reply[2] = renewed
  return reply
end

if token ~= '' then
  local cached = redis.call('GET', P .. ':reply:' .. token)
  if cached then return replay(cmsgpack.unpack(cached)) end
end
local queue_count = tonumber(ARGV[8])
local queues = {}
for i = 1, queue_count do queues[i] = ARGV[8 + i] end
local settle_count = tonumber(ARGV[9 + queue_count])
local first_settlement = 10 + queue_count

local function optional(value)
  if value == '' then return nil end
  return string.sub(value, 2)
end

-- Commands that many settlements share, sent once per call after the settling loop:
-- the ZREM of leases by queue, the DEL of acked messages and the ZADD to {P}:expiring.
local unleased, acked, expiring = {}, {}, {}
local wake, results = false, false
local rejected = {}

local function reject(id, queue, outcome, reason)
  local n = #rejected
  rejected[n + 1], rejected[n + 2], rejected[n + 3], rejected[n + 4] = id, queue, outcome, reason
end

-- Fail the job record of a message that cannot run, unless it is final already.
-- NOTE: the record gets no expiry, because the script does not know the app's
-- retention; it stays until its dead letter is retried or someone deletes it.
local function fail_job(id, reason)
  local job = jkey(id)
  local record = read_hash(job, 'state', 'version')
  if not record or not record[1] then return end
  local state = record[1]
  if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return end
  redis.call('HSET', job, 'state', 'failed', 'version', integer((finite(record[2]) or 0) + 1),
    'error_type', 'sluicegate.errors.DecodeError', 'error_message', reason, 'note', reason,
    'finished_at', now_text)
  redis.call('HDEL', job, 'expires_at', 'error_traceback')
  results = true
end

-- Dead-letter a message whose hash exists but holds a missing or corrupt field.
local function bury(queue, id, reason)
  local message = mkey(id)
  redis.call('HSET', message, 'reason', reason, 'dead_at', now_text)
  redis.call('HDEL', message, 'worker')
  redis.call('ZADD', qkey(queue, 'dead'), now_text, id)
  fail_job(id, reason)
  reject(id, queue, 'dead', reason)
end

-- Note an id whose message hash is missing, or whose key holds another type; the caller
-- has taken it out of its set already.
local function drop(queue, id, reason)
  fail_job(id, reason)
  reject(id, queue, 'removed', reason)
end

-- Return why a message key cannot be read as a message, or nil when it is a hash.
-- A hash without any of the fields read is checked for existence, off the fast path.
local function missing(id, fields, err)
  if not fields then return 'message key holds no hash: ' .. err end
  for i = 1, #fields do
    if fields[i] then return nil end
  end
  if redis.call('EXISTS', mkey(id)) == 0 then return 'message hash is missing' end
  return nil
end

-- Write a settlement's job update, and return whether the job is now final. Returns
-- false for a job record that does not exist. A success or failure of a job without an
-- idempotency key takes one HMGET, one HSET and one PEXPIRE.
local function update_job(id, base, action)
  local job = jkey(id)
  local record = read_hash(job, 'state', 'version', 'idempotency_key')
  if not record or not record[1] then return false end
  local state = ARGV[base + 7]
  local fields = {'state', state, 'version', integer((finite(record[2]) or 0) + 1)}
  local result, traceback, note = optional(ARGV[base + 8]), optional(ARGV[base + 11]),
    optional(ARGV[base + 12])
  if result then push_pair(fields, 'result', result) end
  -- A success clears an earlier attempt's error, a new error replaces it whole, and an
  -- update without one keeps it.
  if state == 'succeeded' then
    redis.call('HDEL', job, 'error_type', 'error_message', 'error_traceback')
  elseif ARGV[base + 9] ~= '' then
    push_pair(fields, 'error_type', ARGV[base + 9])
    push_pair(fields, 'error_message', ARGV[base + 10])
    if traceback then push_pair(fields, 'error_traceback', traceback)
    else redis.call('HDEL', job, 'error_traceback') end
  end
  if note == '' then redis.call('HDEL', job, 'note')
  elseif note then push_pair(fields, 'note', note) end
  if action == 'retry' or action == 'defer' then
    push_pair(fields, 'eta', ARGV[base + 4] ~= '' and ARGV[base + 4] or now_text)
  end
  local final = state == 'succeeded' or state == 'failed' or state == 'cancelled'
  if final then
    push_pair(fields, 'finished_at', now_text)
    push_pair(fields, 'expires_at', ARGV[base + 13])
  end
  redis.call('HSET', job, unpack(fields))
  if ARGV[base + 15] == '0' then redis.call('HINCRBY', job, 'attempts', -1) end
  if final then
    -- The retention of retain() in COMMON, with the ZADD deferred to the batch.
    push_pair(expiring, ARGV[base + 13], id)
    redis.call('PEXPIRE', job, ARGV[base + 14])
    local key = record[3]
    if key and redis.call('GET', idem_key(key)) == id then
      redis.call('PEXPIRE', idem_key(key), ARGV[base + 14])
    end
  else
    redis.call('HDEL', job, 'finished_at', 'expires_at')
  end
  return final
end

-- Return why a settlement that puts its message back cannot, or nil. Every such action
-- needs the priority (a delayed one at its promotion), a release the order_at, and a
-- release or deferral the deliveries counter that it decrements.
local function requeue_problem(action, fields)
  local problem = field_problem('priority', fields[1], finite, 'a number')
  if not problem and action == 'release' then
    problem = field_problem('order_at', fields[2], finite, 'a number')
  end
  if not problem and (action == 'release' or action == 'defer') then
    problem = field_problem('deliveries', fields[3], counter, 'a non-negative integer')
  end
  return problem
end

local settled, completed = {}, {}
local done = {}
for i = 0, settle_count - 1 do
  local base = first_settlement + i * 16
  local id, queue, fence, action = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local message = mkey(id)
  local ok = false
  -- An id settled earlier in this call has lost its lease, although the ZREM that
  -- removes it from the lease set is still in the batch.
  if not done[id] then
    local leased = redis.call('ZSCORE', qkey(queue, 'leased'), id)
    -- pcall: a message key of another type fails the fence check instead of the script.
    ok = leased and tonumber(leased) >= now and redis.pcall('HGET', message, 'fence') == fence
    if ok then
      done[id] = true
      local ids = unleased[queue] or {}
      unleased[queue] = ids
      ids[#ids + 1] = id
      local priority, order_at, problem
      if action == 'ack' then
        acked[#acked + 1] = message
        completed[queue] = (completed[queue] or 0) + 1
      elseif action ~= 'dead' then
        local fields = redis.call('HMGET', message, 'priority', 'order_at', 'deliveries')
        priority, order_at = fields[1], fields[2]
        problem = requeue_problem(action, fields)
        if not problem then redis.call('HDEL', message, 'worker') end
      else
        redis.call('HDEL', message, 'worker')
      end
      if problem then
        bury(queue, id, problem)
      elseif (action == 'retry' or action == 'defer') and ARGV[base + 4] ~= '' then
        -- A deferral gives the message back unrun: its delivery does not count.
        if action == 'defer' then redis.call('HINCRBY', message, 'deliveries', -1) end
        redis.call('HSET', message, 'order_at', ARGV[base + 4])
        redis.call('ZADD', qkey(queue, 'delayed'), ARGV[base + 4], id)
      elseif action == 'retry' or action == 'defer' then
        if action == 'defer' then redis.call('HINCRBY', message, 'deliveries', -1) end
        redis.call('HSET', message, 'order_at', now_text)
        make_ready(queue, id, priority, now_text)
        wake = true
      elseif action == 'release' then
        -- Given back unrun: keep its place in the queue and do not count the delivery.
        redis.call('HINCRBY', message, 'deliveries', -1)
        make_ready(queue, id, priority, order_at)
        wake = true
      elseif action ~= 'ack' then
        redis.call('HSET', message, 'reason', ARGV[base + 5], 'dead_at', now_text)
        redis.call('ZADD', qkey(queue, 'dead'), now_text, id)
        completed[queue] = (completed[queue] or 0) + 1
      end
      -- A buried message's job was failed with the reason instead of this update.
      if not problem and ARGV[base + 6] == '1' and update_job(id, base, action) then
        results = true
      end
    end
  end
  table.insert(settled, ok and 1 or 0)
end
-- Sent before the reserve below, whose ZADD to a lease set this ZREM must not undo.
for queue, ids in pairs(unleased) do call_chunked('ZREM', qkey(queue, 'leased'), ids) end
call_chunked('DEL', nil, acked)
call_chunked('ZADD', P .. ':expiring', expiring)
for queue, count in pairs(completed) do count_rate(queue, bucket, 0, count) end

-- Make due delayed messages ready and give expired leases back, oldest first; a
-- bounded number per call keeps one script short.
local function promote(queue, expired)
  local due = redis.call('ZRANGEBYSCORE', qkey(queue, 'delayed'), '-inf', now_text,
    'WITHSCORES', 'LIMIT', 0, 1000)
  for j = 1, #due, 2 do
    local id = due[j]
    redis.call('ZREM', qkey(queue, 'delayed'), id)
    local fields, err = read_hash(mkey(id), 'priority')
    local unreadable = missing(id, fields, err)
    local problem = not unreadable and field_problem('priority', fields[1], finite, 'a number')
    if unreadable then
      drop(queue, id, unreadable)
    elseif problem then
      bury(queue, id, problem)
    else
      make_ready(queue, id, fields[1], due[j + 1])
    end
  end
  local lapsed = redis.call('ZRANGEBYSCORE', qkey(queue, 'leased'), '-inf', '(' .. now_text,
    'LIMIT', 0, 1000)
  for _, id in ipairs(lapsed) do
    local fields, err = read_hash(mkey(id), 'priority', 'order_at', 'worker', 'deliveries')
    redis.call('ZREM', qkey(queue, 'leased'), id)
    local unreadable = missing(id, fields, err)
    local problem = not unreadable and (field_problem('priority', fields[1], finite, 'a number')
      or field_problem('order_at', fields[2], finite, 'a number'))
    if unreadable then
      drop(queue, id, unreadable)
    elseif problem then
      bury(queue, id, problem)
    else
      redis.call('HDEL', mkey(id), 'worker')
      make_ready(queue, id, fields[1], fields[2])
      local job = read_hash(jkey(id), 'state')
      if job and job[1] == 'running' then
        redis.call('HSET', jkey(id), 'state', 'queued')
        redis.call('HINCRBY', jkey(id), 'version', 1)
      end
      local n = #expired
      expired[n + 1], expired[n + 2], expired[n + 3], expired[n + 4] =
        id, queue, fields[3] or '', fields[4] or '0'
    end
  end
end

-- Read a message taken from a ready set, and its job record, without writing. Returns
-- {fields, record}, or {problem = reason, outcome = 'dead' or 'removed'}.
local function inspect(id)
  local fields, err = read_hash(mkey(id), 'fence', 'deliveries', 'body', 'enqueued_at')
  local unreadable = missing(id, fields, err)
  if unreadable then return {problem = unreadable, outcome = 'removed'} end
  local problem = field_problem('fence', fields[1], counter, 'a non-negative integer')
    or field_problem('deliveries', fields[2], counter, 'a non-negative integer')
    or field_problem('body', fields[3])
    or field_problem('enqueued_at', fields[4], finite, 'a number')
  if problem then return {problem = problem, outcome = 'dead'} end
  local record, job_err = read_hash(jkey(id), 'state', 'attempts', 'version',
    'cancel_requested')
  if not record then
    return {problem = 'job record holds no hash: ' .. job_err, outcome = 'dead'}
  end
  return {fields, record}
end

-- Lease one inspected message. Each hash is written with one HSET.
-- Counters stay far below 2^53, so Lua numbers hold them exactly.
local function lease(queue, id, inspected, deliveries, leases)
  local fields, record = inspected[1], inspected[2]
  local fence, count = counter(fields[1]) + 1, counter(fields[2]) + 1
  redis.call('HSET', mkey(id), 'fence', integer(fence), 'deliveries', integer(count),
    'worker', worker)
  push_pair(leases, lease_until, id)
  local cancel = 0
  if record[1] then
    redis.call('HSET', jkey(id), 'state', 'running', 'started_at', now_text,
      'attempts', integer((finite(record[2]) or 0) + 1),
      'version', integer((finite(record[3]) or 0) + 1))
    if record[4] == '1' then cancel = 1 end
  end
  local n = #deliveries
  deliveries[n + 1], deliveries[n + 2], deliveries[n + 3] = id, queue, fence
  deliveries[n + 4], deliveries[n + 5], deliveries[n + 6] = count, fields[4], fields[3]
  deliveries[n + 7] = cancel
end

-- At most this many malformed messages are rejected per call, to keep one script short.
local MAX_REJECTED = 1000

local deliveries, expired = {}, {}
local remaining = limit
for _, queue in ipairs(queues) do
  if remaining <= 0 then break end
  promote(queue, expired)
  -- Lease entries of this queue, added with one ZADD after its ready sets.
  local leases = {}
  for _, priority in ipairs(levels(queue)) do
    if remaining <= 0 or #rejected >= 4 * MAX_REJECTED then break end
    local key = qkey(queue, 'ready:' .. priority)
    local emptied = false
    -- Each round takes out every id it read, so the loop ends with the set.
    while remaining > 0 and not emptied and #rejected < 4 * MAX_REJECTED do
      -- ZRANGE and ZREMRANGEBYRANK rather than ZPOPMIN, which also returns each score
      -- as a float that Redis formats and Lua parses, about twice the cost per message.
      local requested = remaining
      local ids = redis.call('ZRANGE', key, 0, requested - 1)
      -- Every id is read before any is removed, and what follows the removal cannot
      -- fail on a message's contents, so no id leaves the set unprocessed.
      local inspected = {}
      for i, id in ipairs(ids) do inspected[i] = inspect(id) end
      if #ids > 0 then redis.call('ZREMRANGEBYRANK', key, 0, #ids - 1) end
      for i, id in ipairs(ids) do
        local entry = inspected[i]
        if entry.outcome == 'dead' then
          bury(queue, id, entry.problem)
        elseif entry.outcome then
          drop(queue, id, entry.problem)
        else
          lease(queue, id, entry, deliveries, leases)
          remaining = remaining - 1
        end
      end
      -- A ZRANGE that returned fewer than requested emptied the set.
      emptied = #ids < requested
    end
    if emptied or redis.call('ZCARD', key) == 0 then
      redis.call('ZREM', qkey(queue, 'levels'), priority)
    end
  end
  call_chunked('ZADD', qkey(queue, 'leased'), leases)
end

if wake then redis.call('PUBLISH', P .. ':wake', 'retry') end
if results then redis.call('PUBLISH', P .. ':results', 'settled') end
local reply = {settled, deliveries, expired, rejected}
if token ~= '' and (#deliveries > 0 or settle_count > 0) then
  redis.call('SET', P .. ':reply:' .. token, cmsgpack.pack(reply), 'PX', 60000)
end
return reply
"""
)

#: Extend leases. ARGV: tag, now, lease_until, then (id, queue, fence) per delivery.
EXTEND = (
    COMMON
    + """
local now = tonumber(ARGV[2])
local held = {}
for base = 4, #ARGV, 3 do
  local id, queue, fence = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local leased = redis.call('ZSCORE', qkey(queue, 'leased'), id)
  if leased and tonumber(leased) >= now and redis.call('HGET', mkey(id), 'fence') == fence then
    redis.call('ZADD', qkey(queue, 'leased'), 'XX', ARGV[3], id)
    table.insert(held, 1)
  else
    table.insert(held, 0)
  end
end
return held
"""
)

#: Return the live message count of one queue. ARGV: tag, queue.
LENGTH = (
    COMMON
    + """
return queue_length(ARGV[2])
"""
)

#: Earliest delayed ready time or lease expiry over every queue. ARGV: tag.
NEXT_DUE = (
    COMMON
    + """
local due = nil
for _, queue in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, part in ipairs({'delayed', 'leased'}) do
    local first = redis.call('ZRANGE', qkey(queue, part), 0, 0, 'WITHSCORES')
    due = earlier(due, first[2])
  end
end
return due or false
"""
)

#: Stats of the named queues, or of every queue if none is named. ARGV: tag, now, queues...
#: Returns per queue: name, ready, delayed, due delayed, leased, expired leases, dead,
#: oldest ready time, max_length, max_wait, then the five rate fields.
STATS = (
    COMMON
    + """
local now = ARGV[2]
local names = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then table.insert(names, ARGV[i]) end
  end
else
  names = redis.call('SMEMBERS', KEYS[1])
end
local rows = {}
for _, queue in ipairs(names) do
  local oldest = oldest_ready(queue, now)
  local lapsed = redis.call('ZRANGEBYSCORE', qkey(queue, 'leased'), '-inf', '(' .. now)
  for _, id in ipairs(lapsed) do
    oldest = earlier(oldest, redis.call('HGET', mkey(id), 'order_at') or nil)
  end
  local meta = redis.call('HMGET', qkey(queue, 'meta'), 'max_length', 'max_wait')
  local row = {queue, ready_count(queue), redis.call('ZCARD', qkey(queue, 'delayed')),
    redis.call('ZCOUNT', qkey(queue, 'delayed'), '-inf', now),
    redis.call('ZCARD', qkey(queue, 'leased')), #lapsed,
    redis.call('ZCARD', qkey(queue, 'dead')), oldest or false, meta[1], meta[2]}
  for _, value in ipairs(rate_row(queue)) do table.insert(row, value) end
  table.insert(rows, row)
end
return rows
"""
)

#: Cancel a job. ARGV: tag, now, id, expires_at, retention_ms.
#: Returns the job's stored state before the request, or false for an unknown id.
CANCEL = (
    COMMON
    + """
local id = ARGV[3]
local job = jkey(id)
local state = redis.call('HGET', job, 'state')
if not state then return false end
if state == 'scheduled' or state == 'queued' or state == 'retrying' then
  local message = mkey(id)
  local fields = redis.call('HMGET', message, 'queue', 'priority')
  if fields[1] then
    local removed = unready(fields[1], id, fields[2])
      + redis.call('ZREM', qkey(fields[1], 'delayed'), id)
    if removed > 0 then redis.call('DEL', message) end
  end
  redis.call('HSET', job, 'state', 'cancelled', 'cancel_requested', 1, 'finished_at', ARGV[2],
    'expires_at', ARGV[4], 'note', 'cancelled before it ran')
  redis.call('HINCRBY', job, 'version', 1)
  retain(id, ARGV[4], ARGV[5])
  redis.call('PUBLISH', P .. ':results', id)
elseif state == 'running' then
  redis.call('HSET', job, 'cancel_requested', 1)
  redis.call('HINCRBY', job, 'version', 1)
end
return state
"""
)

#: Record progress if the lease is held. ARGV: tag, id, fence, fraction, message or ''.
PROGRESS = (
    COMMON
    + """
local id = ARGV[2]
local fields = redis.call('HMGET', mkey(id), 'queue', 'fence')
if not fields[1] or fields[2] ~= ARGV[3] then return 0 end
if not redis.call('ZSCORE', qkey(fields[1], 'leased'), id) then return 0 end
if redis.call('EXISTS', jkey(id)) == 0 then return 1 end
redis.call('HSET', jkey(id), 'progress', ARGV[4])
redis.call('HINCRBY', jkey(id), 'version', 1)
if ARGV[5] == '' then
  redis.call('HDEL', jkey(id), 'progress_message')
else
  redis.call('HSET', jkey(id), 'progress_message', string.sub(ARGV[5], 2))
end
return 1
"""
)

#: Delete up to ARGV[3] final job records whose retention ended. ARGV: tag, now, batch.
PURGE_EXPIRED = (
    COMMON
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. ':expiring', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local key = redis.call('HGET', jkey(id), 'idempotency_key')
  if key and redis.call('GET', idem_key(key)) == id then redis.call('DEL', idem_key(key)) end
  redis.call('DEL', jkey(id))
  redis.call('ZREM', P .. ':expiring', id)
end
return #ids
"""
)

#: List dead letters, oldest first. ARGV: tag, queue, limit.
#: Returns per letter: id, body, reason, dead_at, deliveries.
DEAD_LETTERS = (
    COMMON
    + """
local rows = {}
for _, id in ipairs(redis.call('ZRANGE', qkey(ARGV[2], 'dead'), 0, tonumber(ARGV[3]) - 1)) do
  -- A message dead-lettered for a missing body or a corrupt field is listed too.
  local fields = read_hash(mkey(id), 'body', 'reason', 'dead_at', 'deliveries')
  if fields and (fields[1] or fields[2]) then
    table.insert(rows, {id, fields[1] or '', fields[2] or '', finite(fields[3]) and fields[3]
      or '0', counter(fields[4]) and fields[4] or '0'})
  end
end
return rows
"""
)

#: Put dead letters back on their queue. ARGV: tag, now, queue, ids... (all if none).
RETRY_DEAD = (
    COMMON
    + """
local now, queue = ARGV[2], ARGV[3]
local dead = qkey(queue, 'dead')
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', dead, 0, -1)
end
local count = 0
for _, id in ipairs(ids) do
  local message = mkey(id)
  local fields = read_hash(message, 'priority')
  -- A letter whose priority is missing or corrupt stays dead: make_ready would fail
  -- the script after the ZREM. One whose hash is unreadable leaves the dead set.
  if not fields or (not fields[1] and redis.call('EXISTS', message) == 0) then
    redis.call('ZREM', dead, id)
  elseif finite(fields[1]) and redis.call('ZREM', dead, id) == 1 then
    redis.call('HSET', message, 'order_at', now, 'deliveries', 0)
    redis.call('HDEL', message, 'reason', 'dead_at')
    make_ready(queue, id, fields[1], now)
    local job = jkey(id)
    if redis.call('EXISTS', job) == 1 then
      unretain(id)
      redis.call('HSET', job, 'state', 'queued', 'attempts', 0,
        'note', 'retried from the dead-letter queue')
      redis.call('HINCRBY', job, 'version', 1)
    end
    count = count + 1
  end
end
if count > 0 then redis.call('PUBLISH', P .. ':wake', queue) end
return count
"""
)

#: Delete dead letters. ARGV: tag, queue, ids... (all if none).
PURGE_DEAD = (
    COMMON
    + """
local dead = qkey(ARGV[2], 'dead')
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', dead, 0, -1)
end
local count = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', dead, id) == 1 then
    redis.call('DEL', mkey(id))
    count = count + 1
  end
end
return count
"""
)

#: Take or renew a lock. ARGV: tag, name, holder, now, expires_at, ttl_ms.
ACQUIRE_LOCK = (
    COMMON
    + """
local key = P .. ':lock:' .. ARGV[2]
local current = redis.call('HMGET', key, 'holder', 'expires_at')
if current[1] and current[1] ~= ARGV[3] and tonumber(current[2]) > tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', key, 'holder', ARGV[3], 'expires_at', ARGV[5])
redis.call('PEXPIRE', key, ARGV[6])
return 1
"""
)

#: Release a lock held by ARGV[3]. ARGV: tag, name, holder.
RELEASE_LOCK = (
    COMMON
    + """
local key = P .. ':lock:' .. ARGV[2]
if redis.call('HGET', key, 'holder') ~= ARGV[3] then return 0 end
redis.call('DEL', key)
return 1
"""
)

#: Compare and set a value. ARGV: tag, key, expected, value; '' is "none" and any other
#: value carries one leading '='.
COMPARE_AND_SET = (
    COMMON
    + """
local key = P .. ':kv:' .. ARGV[2]
local current = redis.call('GET', key)
if ARGV[3] == '' then
  if current then return 0 end
elseif current ~= string.sub(ARGV[3], 2) then
  return 0
end
if ARGV[4] == '' then
  redis.call('DEL', key)
  redis.call('ZREM', P .. ':kv-index', ARGV[2])
else
  redis.call('SET', key, string.sub(ARGV[4], 2))
  redis.call('ZADD', P .. ':kv-index', 0, ARGV[2])
end
return 1
"""
)
