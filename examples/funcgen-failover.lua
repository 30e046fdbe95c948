-- Failover between two copies of a cache, written with memcached's current
-- proxy API (function generators, memcached 1.6.30 and later).
--
-- Reads go to the primary pool. When it answers with an error (down,
-- refusing, or past the read timeout) or with a miss, the read goes to the
-- secondary pool, as routelib's route_failover does with `miss = true`.
--
-- Writes (set, add, delete, incr, touch, ms, md, ...) go to both pools at
-- once. This is what memcached's proxy documentation recommends for copies
-- kept for availability (its "Basic replication" example copies every
-- write to all of them): a write sent to the primary only would leave the
-- secondary without the key, so a failover read would miss, and a delete
-- sent to the primary only would let a failover read bring back what was
-- deleted. The client gets the first answer that is not an error, so
-- writes keep working while the primary is down or stalled; it gets an
-- error only when both pools fail. (routelib's route_allfastest returns
-- the first answer of any kind, which while the primary refuses
-- connections is often the primary's error.)
--
-- Keep to commands that mean the same on both copies: a `gets` CAS value
-- comes from whichever copy answered, so `cas` across copies can fail.
--
-- Run: memroute --config examples/funcgen-failover.lua --config-arg \
--   'primary=127.0.0.1:11212;secondary=127.0.0.1:11213'
-- (-o proxy_config=examples/funcgen-failover.lua works too; give the list with --config-arg:
-- memcached's proxy_arg turns a value holding ":" into a table.)
-- Each pool may list several backends: 'primary=h:p,h:p;secondary=h:p,h:p'.

function mcp_config_pools()
    -- A stalled backend (a hung host, a stopped process) answers nothing:
    -- the read timeout bounds how long a request waits for it before it
    -- counts as an error, and so how long a failover takes. A backend
    -- that fails three times in a row is marked bad, and requests to it
    -- fail at once until it answers again.
    mcp.backend_connect_timeout(1)
    mcp.backend_read_timeout(1)
    mcp.backend_failure_limit(3)
    mcp.backend_retry_waittime(1)
    local pools = {}
    for name, list in string.gmatch(mcp.start_arg or "", "(%w+)=([^;]+)") do
        local backends = {}
        for hp in string.gmatch(list, "[^,]+") do
            local host, port = string.match(hp, "^(.+):(%d+)$")
            assert(host, "start argument: expected host:port, got " .. hp)
            local label = name .. (#backends + 1)
            table.insert(backends, mcp.backend(label, host, tonumber(port)))
        end
        pools[name] = mcp.pool(backends)
    end
    assert(pools.primary and pools.secondary,
        "start argument: give 'primary=host:port;secondary=host:port'")
    return pools
end

-- Reads: the primary, then on an error or a miss the secondary.
local function read_slot(rctx, h)
    return function(r)
        local first = rctx:enqueue_and_wait(r, h.primary)
        if first:hit() then
            return first
        end
        local second = rctx:enqueue_and_wait(r, h.secondary)
        -- A hit on the secondary wins; else the primary's miss if it
        -- answered one; else what the secondary said (a miss, or an error
        -- when both failed).
        if second:hit() or not first:ok() then
            return second
        end
        return first
    end
end

-- Writes: both pools at once; the first answer that is not an error.
local function write_slot(rctx, h)
    local both = { h.primary, h.secondary }
    return function(r)
        rctx:enqueue(r, both)
        -- Returns at the first non-error answer, or once both answered.
        -- The other request goes on after the client has its answer.
        rctx:wait_cond(1, mcp.WAIT_OK)
        return rctx:res_ok(h.primary) or rctx:res_ok(h.secondary)
            or rctx:res_any(h.primary) or rctx:res_any(h.secondary)
    end
end

local function funcgen(name, pools, slot)
    local fgen = mcp.funcgen_new()
    local handles = {
        primary = fgen:new_handle(pools.primary),
        secondary = fgen:new_handle(pools.secondary),
    }
    fgen:ready({ n = name, a = handles, f = slot })
    return fgen
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_ANY_STORAGE, funcgen("failover_writes", pools, write_slot))
    local reads = funcgen("failover_reads", pools, read_slot)
    for _, cmd in ipairs({ mcp.CMD_GET, mcp.CMD_GETS, mcp.CMD_GAT, mcp.CMD_GATS, mcp.CMD_MG }) do
        mcp.attach(cmd, reads)
    end
end
