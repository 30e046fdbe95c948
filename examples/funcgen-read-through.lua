-- A local cache tier in front of a pool, written with memcached's current
-- proxy API (function generators, memcached 1.6.30 and later). The local
-- tier is the proxy's own cache (memroute's embedded cache, memcached's
-- own storage), reached through the handle `mcp.internal_handler`.
--
-- `get`: the local tier first. On a local miss, the pool; a hit there is
-- returned and copied into the local tier with a short TTL, so the next
-- reads of a hot key are served without a network round trip.
-- Writes (set, delete, incr, touch, ms, md, ...) go to the pool, then the
-- key is deleted from the local tier, so this proxy reads the new value
-- next. Other proxies' local tiers keep the old value until its TTL runs
-- out: the short TTL bounds how stale a read can be.
-- gets, gat, gats and mg go to the pool: CAS values and TTLs of the local
-- copy mean nothing to the pool.
--
-- Run: memroute --config examples/funcgen-read-through.lua \
--               --config-arg 127.0.0.1:11212,127.0.0.1:11213
-- (-o proxy_config=examples/funcgen-read-through.lua works too; give the list with --config-arg:
-- memcached's proxy_arg turns a value holding ":" into a table.)
-- A "ttl=N" entry in the start argument sets the local TTL in seconds
-- (default 3): --config-arg ttl=10,127.0.0.1:11212.

function mcp_config_pools()
    local backends = {}
    local ttl = 3
    for entry in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local n = string.match(entry, "^ttl=(%d+)$")
        if n then
            ttl = tonumber(n)
        else
            local host, port = string.match(entry, "^(.+):(%d+)$")
            assert(host, "start argument: expected host:port or ttl=N, got " .. entry)
            table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
        end
    end
    assert(ttl > 0, "ttl must be at least 1 second")
    return { main = mcp.pool(backends), ttl = ttl }
end

local function read_slot(rctx, a)
    local fill_head = "ms %s %s T" .. a.ttl .. " F%s\r\n"
    return function(r)
        local here = rctx:enqueue_and_wait(r, a.local_tier)
        if here:hit() then
            return here
        end
        local res = rctx:enqueue_and_wait(r, a.pool)
        if res:hit() then
            -- "VALUE <key> <flags> <bytes>": the copy keeps the client
            -- flags. It is made only on a local miss, and sent without
            -- waiting for its answer: the client has its value at once.
            local flags, bytes = string.match(res:line(), "^VALUE %S+ (%d+) (%d+)")
            local fill = mcp.request(string.format(fill_head, r:key(), bytes, flags), res)
            rctx:enqueue(fill, a.local_fill)
            rctx:wait_cond(0)
        end
        return res
    end
end

local function write_slot(rctx, a)
    -- Made once per slot, reused by every request the slot serves.
    local delete = rctx:request_new()
    return function(r)
        local res = rctx:enqueue_and_wait(r, a.pool)
        a.to_delete(delete, r)
        rctx:enqueue_and_wait(delete, a.local_tier)
        return res
    end
end

local function direct_slot(rctx, a)
    return function(r)
        return rctx:enqueue_and_wait(r, a.pool)
    end
end

function mcp_config_routes(c)
    -- A mutator that writes a request deleting the key of the request it
    -- is given: "md <key>". Built once; each slot writes into an object
    -- of its own (rctx:request_new()).
    local to_delete = mcp.req_mutator_new(
        { t = "cmdset", cmd = "md" },
        { t = "keycopy", idx = 1 })
    local function funcgen(name, slot, objects)
        local fgen = mcp.funcgen_new()
        local a = {
            pool = fgen:new_handle(c.main),
            local_tier = fgen:new_handle(mcp.internal_handler),
            -- A second handle on the local tier for the fill: a handle
            -- takes one request per client request, and the read already
            -- used the first.
            local_fill = fgen:new_handle(mcp.internal_handler),
            ttl = c.ttl,
            to_delete = to_delete,
        }
        fgen:ready({ n = name, a = a, f = slot, u = objects })
        return fgen
    end
    mcp.attach(mcp.CMD_ANY_STORAGE, funcgen("tier_writes", write_slot, 1))
    mcp.attach(mcp.CMD_GET, funcgen("tier_reads", read_slot))
    local direct = funcgen("tier_direct", direct_slot)
    for _, cmd in ipairs({ mcp.CMD_GETS, mcp.CMD_GAT, mcp.CMD_GATS, mcp.CMD_MG }) do
        mcp.attach(cmd, direct)
    end
end
