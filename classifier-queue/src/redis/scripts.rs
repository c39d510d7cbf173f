//! The Lua scripts: every step that touches more than one key runs as one script, so it is
//! atomic. They are sent with `EVALSHA` and reloaded automatically after a `NOSCRIPT` (a
//! restarted or flushed server) by [`redis::Script`].
//!
//! Queue scripts get the fourteen queue keys of [`super::keys::Keys::queue`] as
//! `KEYS[1..=14]` (ready sets for ranks 0..=3 at 1..=4, delayed 5, leased 6, dead 7, prio 8,
//! deliveries 9, tokens 10, deadinfo 11, seq 12, scores 13, clock 14) and job keys after them. Time is the server's (`TIME`), so
//! workers on hosts with skewed clocks agree on lease expiry and retry times.
//!
//! The webhook scripts are the exception: a delivery's due time is the `next_attempt_at` its
//! dispatcher wrote (wall-clock ms), so claims compare it with the dispatcher's clock
//! (passed in `ARGV`), not the server's; dispatcher hosts are expected to be NTP-synced.

use redis::Script;

/// Helpers shared by the queue scripts (prepended to each).
///
/// Ready scores are [`QueueConfig::score`] in microseconds: `enqueued_at_us - rank *
/// aging_us`, where `enqueued_at_us` comes from a per-deployment clock that never repeats a
/// value (`KEYS[14]`), so jobs enqueued in the same millisecond keep their arrival order
/// (sorted sets would otherwise break ties by member, i.e. by random job id). A job keeps
/// its score (`KEYS[13]`) while it is queued, so redeliveries and releases keep their place.
/// Big numbers are formatted with `%.0f` (Lua's `tostring` keeps only 14 digits).
///
/// [`QueueConfig::score`]: classifier_core::backend::QueueConfig::score
const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(n) return string.format('%.0f', n) end
local function enqueue_time_us()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[14]) or '0') or 0
  if now <= last then now = last + 1 end
  redis.call('SET', KEYS[14], num(now))
  return now
end
local function rank_of(id)
  return tonumber(redis.call('HGET', KEYS[8], id) or '1') or 1
end
-- A new entry: fresh score, fresh delivery count.
local function add_entry(id, rank, aging_us)
  local score = enqueue_time_us() - rank * aging_us
  redis.call('HSET', KEYS[8], id, rank)
  redis.call('HSET', KEYS[9], id, 0)
  redis.call('HSET', KEYS[13], id, num(score))
  redis.call('ZADD', KEYS[1 + rank], num(score), id)
end
-- Back to ready under the entry's own score.
local function make_ready(id)
  local rank = rank_of(id)
  local score = redis.call('HGET', KEYS[13], id)
  if not score then
    score = num(enqueue_time_us())
    redis.call('HSET', KEYS[13], id, score)
  end
  redis.call('ZADD', KEYS[1 + rank], score, id)
end
local function forget(id)
  redis.call('HDEL', KEYS[9], id)
  redis.call('HDEL', KEYS[10], id)
  redis.call('HDEL', KEYS[13], id)
end
local function dead_letter(id, deliveries, reason, now)
  redis.call('ZADD', KEYS[7], num(now), id)
  redis.call('HSET', KEYS[11], id, deliveries .. '|' .. num(now) .. '|' .. reason)
  forget(id)
end
local function reclaim(now, max_attempts)
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', num(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[5], id)
    make_ready(id)
  end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', num(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    redis.call('ZREM', KEYS[6], id)
    redis.call('HDEL', KEYS[10], id)
    local d = tonumber(redis.call('HGET', KEYS[9], id) or '0') or 0
    if d >= max_attempts then
      dead_letter(id, d, 'lease expired after ' .. d .. ' deliveries (worker lost or too slow)', now)
    else
      make_ready(id)
    end
  end
end
local function waiting()
  return redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
    + redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5])
end
-- A lease is valid while its token is the current one and it has not expired.
local function valid_lease(id, token, now)
  if redis.call('HGET', KEYS[10], id) ~= token then return false end
  local expires = redis.call('ZSCORE', KEYS[6], id)
  return expires ~= false and tonumber(expires) > now
end
local function is_entry(id)
  return redis.call('HEXISTS', KEYS[13], id) == 1
end
"#;

/// Create + enqueue. KEYS: queue, 15 status, 16 image. ARGV: id, rank, doc, status, status
/// ttl ms, image ttl ms, max depth, aging us, payload.
/// Returns `{'ok'}`, `{'exists'}` or `{'full', depth}`.
const CREATE: &str = r#"
local id, rank = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[15]) == 1 or is_entry(id) then return {'exists'} end
local depth = waiting()
if depth >= tonumber(ARGV[7]) then return {'full', depth} end
redis.call('HSET', KEYS[15], 'rev', '0', 'status', ARGV[4], 'doc', ARGV[3])
redis.call('PEXPIRE', KEYS[15], ARGV[5])
redis.call('SET', KEYS[16], ARGV[9], 'PX', ARGV[6])
add_entry(id, rank, tonumber(ARGV[8]))
return {'ok'}
"#;

/// Enqueue a job unless it is already queued or leased; a dead letter of the same id leaves
/// the dead-letter list. KEYS: queue. ARGV: id, rank, aging us. Returns 1 if queued.
const ENQUEUE: &str = r#"
local id = ARGV[1]
if is_entry(id) then return 0 end
if redis.call('ZREM', KEYS[7], id) == 1 then redis.call('HDEL', KEYS[11], id) end
add_entry(id, tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"#;

/// Reclaim expired leases, promote due retries, then lease up to `max` jobs, best (lowest
/// score) first. KEYS: queue. ARGV: max, visibility ms, max attempts.
/// Returns `{expires_ms, id, token, delivery, rank, id, token, ...}`.
const DEQUEUE: &str = r#"
local now = now_ms()
local max, vis, max_attempts = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
reclaim(now, max_attempts)
local expires = now + vis
local out = {expires}
for _ = 1, max do
  local best, best_score, best_rank = nil, nil, nil
  for r = 0, 3 do
    local head = redis.call('ZRANGE', KEYS[1 + r], 0, 0, 'WITHSCORES')
    if head[1] then
      local s = tonumber(head[2])
      if best_score == nil or s < best_score or (s == best_score and r > best_rank) then
        best, best_score, best_rank = head[1], s, r
      end
    end
  end
  if not best then break end
  redis.call('ZREM', KEYS[1 + best_rank], best)
  local d = redis.call('HINCRBY', KEYS[9], best, 1)
  local token = redis.call('INCR', KEYS[12]) .. '-' .. num(now)
  redis.call('HSET', KEYS[10], best, token)
  redis.call('ZADD', KEYS[6], num(expires), best)
  out[#out + 1] = best
  out[#out + 1] = token
  out[#out + 1] = d
  out[#out + 1] = best_rank
end
return out
"#;

/// Extend a valid (current, unexpired) lease. KEYS: queue. ARGV: id, token, visibility ms.
/// Returns the new expiry (ms) or 0 if the lease is stale.
const EXTEND: &str = r#"
local now = now_ms()
if not valid_lease(ARGV[1], ARGV[2], now) then return 0 end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[6], num(expires), ARGV[1])
return expires
"#;

/// Ack. KEYS: queue. ARGV: id, token. Returns 1, or 0 if stale or already acked.
const ACK: &str = r#"
local id = ARGV[1]
if not valid_lease(id, ARGV[2], now_ms()) then return 0 end
redis.call('ZREM', KEYS[6], id)
forget(id)
redis.call('HDEL', KEYS[8], id)
return 1
"#;

/// Nack. KEYS: queue. ARGV: id, token, reason, retry delay ms, max attempts.
/// Returns `{'retry', at_ms}`, `{'dead'}` or `{'stale'}`.
const NACK: &str = r#"
local id = ARGV[1]
local now = now_ms()
if not valid_lease(id, ARGV[2], now) then return {'stale'} end
redis.call('ZREM', KEYS[6], id)
redis.call('HDEL', KEYS[10], id)
local d = tonumber(redis.call('HGET', KEYS[9], id) or '0') or 0
if d >= tonumber(ARGV[5]) then
  dead_letter(id, d, ARGV[3], now)
  return {'dead'}
end
local at = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[5], num(at), id)
return {'retry', at}
"#;

/// Release without counting a failure; the job keeps its place. KEYS: queue. ARGV: id, token.
/// Returns 1, or 0 if stale.
const RELEASE: &str = r#"
local id = ARGV[1]
if not valid_lease(id, ARGV[2], now_ms()) then return 0 end
redis.call('ZREM', KEYS[6], id)
redis.call('HDEL', KEYS[10], id)
local d = tonumber(redis.call('HGET', KEYS[9], id) or '0') or 0
if d > 0 then d = d - 1 end
redis.call('HSET', KEYS[9], id, d)
make_ready(id)
return 1
"#;

/// Remove a waiting job. KEYS: queue. ARGV: id. Returns 1, or 0 if it was not waiting.
const REMOVE: &str = r#"
local id = ARGV[1]
local removed = 0
for r = 1, 5 do
  removed = removed + redis.call('ZREM', KEYS[r], id)
end
if removed == 0 then return 0 end
forget(id)
redis.call('HDEL', KEYS[8], id)
return 1
"#;

/// Depth: `{ready0, ready1, ready2, ready3, delayed, leased, dead}`. KEYS: queue.
const DEPTH: &str = r#"
local out = {}
for i = 1, 7 do out[i] = redis.call('ZCARD', KEYS[i]) end
return out
"#;

/// The dead-letter list, oldest first: `{id, rank, info, id, rank, info, ...}`. KEYS: queue.
const DEAD_LETTERS: &str = r#"
local ids = redis.call('ZRANGE', KEYS[7], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = rank_of(id)
  out[#out + 1] = redis.call('HGET', KEYS[11], id) or ''
end
return out
"#;

/// Retry a dead letter with a fresh delivery count. KEYS: queue. ARGV: id, aging us.
/// Returns 1, or 0 if it is not in the list.
const RETRY_DEAD: &str = r#"
local id = ARGV[1]
if redis.call('ZREM', KEYS[7], id) == 0 then return 0 end
redis.call('HDEL', KEYS[11], id)
add_entry(id, rank_of(id), tonumber(ARGV[2]))
return 1
"#;

/// Compare-and-set + publish. KEYS: 1 status, 2 result. ARGV: expected rev, new rev, doc,
/// status, status ttl ms, result ttl ms, channel.
/// Returns `{1}` (swapped), `{0}` (no record) or `{0, current doc}`.
const CAS: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'rev', 'doc')
if not cur[1] then return {0} end
if cur[1] ~= ARGV[1] then return {0, cur[2]} end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'status', ARGV[4], 'doc', ARGV[3])
local ttl = tonumber(ARGV[5])
if ARGV[4] == 'completed' then
  local rt = redis.call('PTTL', KEYS[2])
  if rt < 0 then rt = tonumber(ARGV[6]) end
  if rt > ttl then ttl = rt end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[7], ARGV[3])
return {1}
"#;

/// Store a result unless one exists; a completed record then lives as long as the result.
/// KEYS: 1 result, 2 status. ARGV: result JSON, result ttl ms. Returns the stored JSON.
const PUT_RESULT: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('HGET', KEYS[2], 'status') == 'completed' then
    local st = redis.call('PTTL', KEYS[2])
    if st >= 0 and st < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
  end
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
"#;

/// Heartbeat. KEYS: 1 seen, 2 info. ARGV: id, info JSON, window ms.
const HEARTBEAT: &str = r#"
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return 1
"#;

/// Workers seen within the window. KEYS: 1 seen, 2 info. ARGV: window ms.
/// Returns the info JSON of each.
const WORKERS: &str = r#"
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local out = {}
for _, id in ipairs(ids) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then out[#out + 1] = info end
end
return out
"#;

/// Helpers of the webhook and feedback scripts (prepended to each).
///
/// `stamp(zset)` is the server time in ms, moved past the highest score in `zset`, so
/// members added one after the other keep their order even within one millisecond (sorted
/// sets would otherwise break ties by member).
const STAMP: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function num(n) return string.format('%.0f', n) end
local function stamp(zset)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= now then now = tonumber(last[2]) + 1 end
  return now
end
"#;

/// Enqueue a webhook unless its event is pending or dead. KEYS: 1 pending, 2 due, 3 dead,
/// 4 dead order. ARGV: event id, JSON, due ms. Returns 1 if added.
const WH_ENQUEUE: &str = r#"
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('HEXISTS', KEYS[3], id) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], id)
return 1
"#;

/// Claim due webhooks, earliest first: each one's due time becomes now + lease.
/// KEYS: 1 pending, 2 due. ARGV: now ms, max, lease ms. Returns the claimed JSON documents
/// (their stored `next_attempt_at` is stale: the due set is the truth).
const WH_CLAIM: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local until_ms = num(tonumber(ARGV[1]) + tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[1], id)
  if json then
    redis.call('ZADD', KEYS[2], until_ms, id)
    out[#out + 1] = json
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"#;

/// Forget a delivered webhook. KEYS: 1 pending, 2 due. ARGV: event id.
const WH_COMPLETE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// Store a pending webhook's new state and due time; ignored if it is no longer pending.
/// KEYS: 1 pending, 2 due. ARGV: event id, JSON, due ms. Returns 1 if stored.
const WH_RESCHEDULE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"#;

/// Move a pending webhook to the dead letters (as given); ignored if it is no longer
/// pending. KEYS: 1 pending, 2 due, 3 dead, 4 dead order. ARGV: event id, JSON.
/// Returns 1 if moved.
const WH_DEAD_LETTER: &str = r#"
local id = ARGV[1]
if redis.call('HDEL', KEYS[1], id) == 0 then return 0 end
redis.call('ZREM', KEYS[2], id)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('ZADD', KEYS[4], num(stamp(KEYS[4])), id)
return 1
"#;

/// The webhook dead letters, oldest first. KEYS: 1 pending, 2 due, 3 dead, 4 dead order.
/// Returns the JSON documents.
const WH_DEAD_LETTERS: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  local json = redis.call('HGET', KEYS[3], id)
  if json then out[#out + 1] = json end
end
return out
"#;

/// Move a dead-lettered webhook back to pending if its stored JSON is still `expected`
/// (compare-and-set: the caller rewrote it with attempts 0 and the new due time).
/// KEYS: 1 pending, 2 due, 3 dead, 4 dead order. ARGV: event id, expected JSON, new JSON,
/// due ms. Returns 1 (moved), 0 (not dead-lettered) or 2 (changed meanwhile: read again).
const WH_RETRY_DEAD: &str = r#"
local id = ARGV[1]
local cur = redis.call('HGET', KEYS[3], id)
if not cur then return 0 end
if cur ~= ARGV[2] then return 2 end
redis.call('HDEL', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('HSET', KEYS[1], id, ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], id)
return 1
"#;

/// Store feedback, replacing the job's earlier entry (which keeps its place).
/// KEYS: 1 entries, 2 order. ARGV: job id, JSON. Returns how many jobs have feedback.
const FB_ADD: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], num(stamp(KEYS[2])), ARGV[1])
end
return redis.call('HLEN', KEYS[1])
"#;

/// Feedback in the order first given, ranks `start..=stop`. KEYS: 1 entries, 2 order.
/// ARGV: start, stop. Returns the JSON documents.
const FB_ENTRIES: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], ARGV[1], ARGV[2])) do
  local json = redis.call('HGET', KEYS[1], id)
  if json then out[#out + 1] = json end
end
return out
"#;

/// Store a finished job (a cache hit) and publish its record, like the CAS script: the
/// result with the result TTL, the record with the status TTL (a completed one as long as
/// its result). Refused if the job exists or is queued.
/// KEYS: 1 status, 2 result, 3 queue scores. ARGV: id, rev, doc, status, status ttl ms,
/// result ttl ms, result JSON, channel. Returns 1, or 0 if the job exists.
const CREATE_FINISHED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[6])
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'status', ARGV[4], 'doc', ARGV[3])
local ttl = tonumber(ARGV[5])
if ARGV[4] == 'completed' and tonumber(ARGV[6]) > ttl then ttl = tonumber(ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[8], ARGV[3])
return 1
"#;

/// All scripts, hashed once.
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) enqueue: Script,
    pub(crate) dequeue: Script,
    pub(crate) extend: Script,
    pub(crate) ack: Script,
    pub(crate) nack: Script,
    pub(crate) release: Script,
    pub(crate) remove: Script,
    pub(crate) depth: Script,
    pub(crate) dead_letters: Script,
    pub(crate) retry_dead: Script,
    pub(crate) cas: Script,
    pub(crate) put_result: Script,
    pub(crate) heartbeat: Script,
    pub(crate) workers: Script,
    pub(crate) wh_enqueue: Script,
    pub(crate) wh_claim: Script,
    pub(crate) wh_complete: Script,
    pub(crate) wh_reschedule: Script,
    pub(crate) wh_dead_letter: Script,
    pub(crate) wh_dead_letters: Script,
    pub(crate) wh_retry_dead: Script,
    pub(crate) fb_add: Script,
    pub(crate) fb_entries: Script,
    pub(crate) create_finished: Script,
}

fn stamp_script(body: &str) -> Script {
    Script::new(&format!("{STAMP}\n{body}"))
}

fn queue_script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            create: queue_script(CREATE),
            enqueue: queue_script(ENQUEUE),
            dequeue: queue_script(DEQUEUE),
            extend: queue_script(EXTEND),
            ack: queue_script(ACK),
            nack: queue_script(NACK),
            release: queue_script(RELEASE),
            remove: queue_script(REMOVE),
            depth: queue_script(DEPTH),
            dead_letters: queue_script(DEAD_LETTERS),
            retry_dead: queue_script(RETRY_DEAD),
            cas: Script::new(CAS),
            put_result: Script::new(PUT_RESULT),
            heartbeat: queue_script(HEARTBEAT),
            workers: queue_script(WORKERS),
            wh_enqueue: Script::new(WH_ENQUEUE),
            wh_claim: stamp_script(WH_CLAIM),
            wh_complete: Script::new(WH_COMPLETE),
            wh_reschedule: Script::new(WH_RESCHEDULE),
            wh_dead_letter: stamp_script(WH_DEAD_LETTER),
            wh_dead_letters: Script::new(WH_DEAD_LETTERS),
            wh_retry_dead: Script::new(WH_RETRY_DEAD),
            fb_add: stamp_script(FB_ADD),
            fb_entries: Script::new(FB_ENTRIES),
            create_finished: Script::new(CREATE_FINISHED),
        }
    }
}
