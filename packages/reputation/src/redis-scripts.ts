/**
 * redis-scripts: the Lua scripts RedisStore runs with EVALSHA (ioredis defineCommand), so each
 * read-decide-write happens inside Redis as one atomic step: two greylist replicas on one Redis get
 * one consistent answer. Exports SCRIPTS (name -> { numberOfKeys, lua }).
 *
 * The greylist and AWL scripts transcribe greylist-rules.ts line by line; keep them in step (the
 * shared test suite runs the same cases against both). Numbers are written with string.format('%d')
 * because Redis may print a bare Lua number as 1.7e+12. TTLs are relative (PEXPIRE) to the `now`
 * the caller passed, so an injected clock and Redis's own expiry agree on durations.
 *
 * Record layouts (prefix 'moat:' by default):
 * - client:<ip>   hash  ls=lastSeen lt=latest p:<test>="passedAt:expiresAt" ds/da/de=DNSWL score/at/expires
 * - triplet:<key> hash  f=firstSeen l=lastSeen p=passed(0|1) a=approvedUntil(0 = none)
 * - pending       zset  member=<key> score=lastSeen, the never-passed triplets (listPending)
 * - awl:<ip>      hash  c=count l=lastBump
 * - lock:cleanup  string, SET NX PX: one cleanup at a time
 */

const FMT = `local function fmt(n) return string.format('%d', n) end`;

/** KEYS[1]=client; ARGV: op(pass|fail|dnswl) now retentionMs test|score ttlMs. Returns latest. */
const CLIENT_WRITE = `${FMT}
local k = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
redis.call('HSET', k, 'ls', fmt(now))
if op == 'pass' then
  redis.call('HSET', k, 'p:' .. ARGV[4], fmt(now) .. ':' .. fmt(now + tonumber(ARGV[5])))
elseif op == 'fail' then
  redis.call('HDEL', k, 'p:' .. ARGV[4])
else
  redis.call('HSET', k, 'ds', ARGV[4], 'da', fmt(now), 'de', fmt(now + tonumber(ARGV[5])))
end
local latest = now
local all = redis.call('HGETALL', k)
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local e = nil
  if string.sub(f, 1, 2) == 'p:' then
    e = tonumber(string.match(v, ':(%-?%d+)$'))
  elseif f == 'de' or f == 'ls' then
    e = tonumber(v)
  end
  if e and e > latest then latest = e end
end
redis.call('HSET', k, 'lt', fmt(latest))
redis.call('PEXPIRE', k, math.max(1, latest + retention - now))
return latest
`;

/** ARGV: cutoff; KEYS: client keys. Drops those whose latest < cutoff. Returns {retained, dropped}. */
const CLEANUP_BATCH = `
local cutoff = tonumber(ARGV[1])
local retained, dropped = 0, 0
for _, k in ipairs(KEYS) do
  local lt = tonumber(redis.call('HGET', k, 'lt'))
  if lt then
    if lt < cutoff then
      redis.call('DEL', k)
      dropped = dropped + 1
    else
      retained = retained + 1
    end
  end
end
return {retained, dropped}
`;

/**
 * greylist-rules' decideTriplet on the triplet hash tk and the pending index pk (member = the key).
 * Returns {code, seconds, firstPass}: code 0 = defer new, 1 = defer early-retry, 2 = pass.
 */
const TRIPLET = `
local function triplet(tk, pk, member, now, delay, rw, maxAge)
  local v = redis.call('HMGET', tk, 'f', 'l', 'p', 'a')
  local exists = v[1] ~= false and v[2] ~= false
  local approved = exists and tonumber(v[4] or '0') >= now
  local first, startOver, wasPassed = now, true, false
  if exists and (approved or now - tonumber(v[2]) <= maxAge) then
    wasPassed = v[3] == '1'
    first = tonumber(v[1])
    startOver = false
    if first > now then
      first = now
      startOver = (not wasPassed) and (not approved)
    elseif (not wasPassed) and (not approved) and now - first > rw then
      first = now
      startOver = true
    end
  end
  local elapsed = now - first
  if wasPassed or approved or elapsed >= delay then
    redis.call('HSET', tk, 'f', fmt(first), 'l', fmt(now), 'p', '1', 'a', '0')
    redis.call('PEXPIRE', tk, math.max(1, maxAge))
    redis.call('ZREM', pk, member)
    local firstPass = 1
    if wasPassed then firstPass = 0 end
    return {2, math.floor(elapsed / 1000), firstPass}
  end
  redis.call('HSET', tk, 'f', fmt(first), 'l', fmt(now), 'p', '0', 'a', '0')
  redis.call('PEXPIRE', tk, math.max(1, math.min(maxAge, rw)))
  redis.call('ZADD', pk, fmt(now), member)
  local code = 1
  if startOver then code = 0 end
  return {code, math.ceil((delay - elapsed) / 1000), 0}
end
`;

/** KEYS[1]=triplet KEYS[2]=pending; ARGV: key now delayMs retryWindowMs maxAgeMs. See TRIPLET. */
const GREYLIST_CHECK = `${FMT}
${TRIPLET}
return triplet(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
`;

/**
 * greylistLookup for a batch of queries with the same settings (up to LOOKUP_BATCH of one turn of the
 * event loop: one call). KEYS[1]=pending, then per query its triplet, client and awl keys. ARGV:
 * the settings once (delayMs retryWindowMs maxAgeMs trust(0|1) awlClients awlIntervalMs nTests
 * tests...), then per query: key now (key '' = not keyed). The settings are sent once, not per query:
 * parsing them for every query cost both ioredis and Redis more than the lookups' own reads.
 * Each query, in order: screen's trust (client-record's dnswlTrusted and passOld, as greylist-rules'
 * clientTrust), then the AWL (awlCurrentCount, and decideAwlBump when it reached awlClients), then
 * TRIPLET when keyed. Returns {code, n, firstPass} per query, flattened: TRIPLET's codes, 3 = trusted
 * (dnswl), 4 = trusted (screen), 5 = AWL (n = the count), 6 = not keyed and not skipped, -1 = this
 * query failed (n = the error); a failing query does not stop the others.
 */
const GREYLIST_LOOKUP = `${FMT}
${TRIPLET}
local delay, rw, maxAge = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local trust, awlClients, interval = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
local nTests = tonumber(ARGV[7])
local passFields = {}
for i = 1, nTests do passFields[i] = 'p:' .. ARGV[7 + i] end
local function lookup(tk, ck, ak, member, now)
  if trust then
    local c = redis.call('HMGET', ck, 'ls', 'ds', 'de')
    if c[1] then
      if c[2] and c[3] and tonumber(c[3]) > now and tonumber(c[2]) < 0 then return {3, 0, 0} end
      if nTests > 0 then
        local passes = redis.call('HMGET', ck, unpack(passFields))
        local all = true
        for i = 1, nTests do
          local p = passes[i]
          local e = p and tonumber(string.match(p, ':(%-?%d+)$'))
          if not (e and e > now) then all = false end
        end
        if all then return {4, 0, 0} end
      end
    end
  end
  if awlClients > 0 then
    local v = redis.call('HMGET', ak, 'c', 'l')
    local count, last = tonumber(v[1]), tonumber(v[2])
    if count and last and now - last <= maxAge and count >= awlClients then
      if now >= last + interval then
        count = count + 1
        redis.call('HSET', ak, 'c', fmt(count), 'l', fmt(now))
        redis.call('PEXPIRE', ak, math.max(1, maxAge))
      end
      return {5, count, 0}
    end
  end
  if member == '' then return {6, 0, 0} end
  return triplet(tk, KEYS[1], member, now, delay, rw, maxAge)
end
local out = {}
local a = 8 + nTests
for q = 1, (#KEYS - 1) / 3 do
  local ok, r = pcall(lookup, KEYS[3 * q - 1], KEYS[3 * q], KEYS[3 * q + 1], ARGV[a], tonumber(ARGV[a + 1]))
  if not ok then
    if type(r) == 'table' then r = r.err end
    r = {-1, tostring(r), 0}
  end
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
  a = a + 2
end
return out
`;

/** KEYS[1]=triplet KEYS[2]=pending; ARGV: key now ttlMs. Returns 1 when approved, 0 when already passed. */
const GREYLIST_APPROVE = `${FMT}
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'f', 'l', 'p')
if v[3] == '1' then return 0 end
local first = v[1] or fmt(now)
local last = v[2] or fmt(now)
redis.call('HSET', KEYS[1], 'f', first, 'l', last, 'p', '0', 'a', fmt(now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], math.max(1, ttl)) end
redis.call('ZADD', KEYS[2], last, ARGV[1])
return 1
`;

/**
 * KEYS[1]=pending, KEYS[2..]=triplet keys; ARGV: now maxAgeMs retryWindowMs prefixLength.
 * Postgrey's maintenance rules; a deleted triplet leaves the pending index too. Returns deleted.
 */
const GREYLIST_EXPIRE = `
local now, maxAge, rw, skip = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = 0
for i = 2, #KEYS do
  local k = KEYS[i]
  local v = redis.call('HMGET', k, 'l', 'p', 'a')
  local last = tonumber(v[1])
  if last then
    local approvedUntil = tonumber(v[3] or '0') or 0
    if last < now - maxAge or (v[2] ~= '1' and last < now - rw and approvedUntil < now) then
      redis.call('DEL', k)
      redis.call('ZREM', KEYS[1], string.sub(k, skip + 1))
      n = n + 1
    end
  end
end
return n
`;

/**
 * KEYS[1]=pending, KEYS[2..]=the triplet keys of ARGV[1..] (pending members). Removes the members
 * whose triplet Redis already expired. Returns how many it removed.
 */
const PENDING_PRUNE = `
local n = 0
for i, member in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('ZREM', KEYS[1], member)
    n = n + 1
  end
end
return n
`;

/** KEYS[1]=awl; ARGV: now maxAgeMs intervalMs. Returns the count. */
const AWL_BUMP = `${FMT}
local now, maxAge, interval = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'c', 'l')
local count, last = tonumber(v[1]), tonumber(v[2])
if count and last and now - last <= maxAge then
  if now < last + interval then return count end
else
  count = 0
end
count = count + 1
redis.call('HSET', KEYS[1], 'c', fmt(count), 'l', fmt(now))
redis.call('PEXPIRE', KEYS[1], math.max(1, maxAge))
return count
`;

/** KEYS: awl keys; ARGV: cutoff. Returns deleted. */
const AWL_EXPIRE = `
local cutoff = tonumber(ARGV[1])
local n = 0
for _, k in ipairs(KEYS) do
  local last = tonumber(redis.call('HGET', k, 'l'))
  if last and last < cutoff then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
`;

/** KEYS[1]=lock; ARGV[1]=token. Deletes the lock only when this process still holds it. */
const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/** numberOfKeys undefined: the caller passes the key count first (batches). */
export const SCRIPTS = {
  moatClientWrite: { numberOfKeys: 1, lua: CLIENT_WRITE },
  moatCleanupBatch: { numberOfKeys: undefined, lua: CLEANUP_BATCH },
  moatGreylistCheck: { numberOfKeys: 2, lua: GREYLIST_CHECK },
  moatGreylistLookup: { numberOfKeys: undefined, lua: GREYLIST_LOOKUP },
  moatGreylistApprove: { numberOfKeys: 2, lua: GREYLIST_APPROVE },
  moatGreylistExpire: { numberOfKeys: undefined, lua: GREYLIST_EXPIRE },
  moatPendingPrune: { numberOfKeys: undefined, lua: PENDING_PRUNE },
  moatAwlBump: { numberOfKeys: 1, lua: AWL_BUMP },
  moatAwlExpire: { numberOfKeys: undefined, lua: AWL_EXPIRE },
  moatUnlock: { numberOfKeys: 1, lua: UNLOCK },
} as const;

export type ScriptName = keyof typeof SCRIPTS;
