-- tier.lua: a memcached pool in front of a slower, durable store (a
-- DynamoDB pool), as route building blocks.
--
--   local tier = require("tier")
--   mcp.attach(mcp.CMD_ANY_STORAGE, tier.route{ cache = pools.cache,
--       store = pools.table, fill_ttl = 300, writes = "cache_first" })
--
-- reads (get, gets, gat, gats, mg): the cache first; on a miss the store,
--   and a hit there is copied into the cache with fill_ttl seconds of TTL
--   (in the background: the client does not wait for the fill).
-- writes = "cache_first" (a write-behind tier: the cache is authoritative
--   and the store, typically a write-behind DynamoDB pool, keeps a durable
--   copy): the write runs on the cache; if it changed the item, a `set` is
--   sent to the store as it is (it carries the item's whole new state), and
--   after any other command (incr, append, cas, touch, ...) the item's state
--   as the cache holds it now is read back and copied to the store.
-- writes = "store_first" (read-through: the store is authoritative): the
--   write runs on the store; if it changed the item, the cached copy is
--   deleted before the client gets its reply, so the next read refills it
--   from the store.

local tier = {}

local READS = {
    [mcp.CMD_GET] = true, [mcp.CMD_GETS] = true, [mcp.CMD_GAT] = true,
    [mcp.CMD_GATS] = true, [mcp.CMD_MG] = true,
}

-- Replies that mean "nothing changed".
local UNCHANGED = {
    [mcp.MCMC_CODE_NOT_STORED] = true, [mcp.MCMC_CODE_EXISTS] = true,
    [mcp.MCMC_CODE_NOT_FOUND] = true, [mcp.MCMC_CODE_END] = true,
}

-- Writes whose request is the item's whole new state: copied to the store
-- as they are, without reading the item back.
local WHOLE = { [mcp.CMD_SET] = true }

local function changed(res)
    return res:ok() and not UNCHANGED[res:code()]
end

local function background(req, pool)
    mcp.await(req, { pool }, 0, mcp.AWAIT_BACKGROUND)
end

-- Copies a store hit into the cache with a short TTL.
local function fill(cache, key, res, ttl)
    local value = res:value()
    if value == nil then return end
    local req = mcp.request(string.format("ms %s %d F%d T%d\r\n", key, #value, res:flags(), ttl),
        value .. "\r\n")
    background(req, cache)
end

-- Copies the cache's current state of `key` to the store.
local function persist(cache, store, key)
    local cur = cache(mcp.request("mg " .. key .. " v f t\r\n"))
    if cur:hit() then
        local ttl = tonumber(cur:flag_token("t") or "-1")
        if ttl < 0 then ttl = 0 end
        local value = cur:value()
        return store(mcp.request(string.format("ms %s %d F%d T%d\r\n", key, #value,
            cur:flags(), ttl), value .. "\r\n"))
    elseif cur:ok() then
        return store(mcp.request("md " .. key .. "\r\n"))
    end
    return cur
end

-- warm = true: at start, copy every live item of the store into the cache
--   (once per process, in the background, progress in the log; see
--   mcp.warm in docs/lua-api.md), with at most fill_ttl seconds of TTL.

function tier.route(conf)
    local cache, store = conf.cache, conf.store
    local fill_ttl = conf.fill_ttl or 300
    local writes = conf.writes or "cache_first"
    if cache == nil or store == nil then
        error("tier.route: cache and store pools are required", 2)
    end
    if writes ~= "cache_first" and writes ~= "store_first" then
        error("tier.route: writes must be \"cache_first\" or \"store_first\"", 2)
    end
    if conf.warm then
        mcp.warm(store, cache, { ttl = fill_ttl })
    end
    return function(r)
        local key = r:key()
        if READS[r:command()] then
            local res = cache(r)
            if res:hit() or not res:ok() then
                return res
            end
            local sres = store(r)
            if sres:hit() then
                fill(cache, key, sres, fill_ttl)
            end
            return sres
        end
        if writes == "store_first" then
            local res = store(r)
            if changed(res) then
                -- Wait for the invalidation: this client's next read must
                -- not find the old cached copy.
                cache(mcp.request("md " .. key .. "\r\n"))
            end
            return res
        end
        local res = cache(r)
        if changed(res) then
            local copy
            if WHOLE[r:command()] then
                copy = store(r)
            else
                copy = persist(cache, store, key)
            end
            if not copy:ok() then
                -- The store refused the copy (e.g. full write-behind
                -- queue): say so rather than pretend it is durable.
                return copy
            end
        end
        return res
    end
end

return tier
