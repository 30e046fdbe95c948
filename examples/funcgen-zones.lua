-- Zone failover written with memcached's current proxy API (funcgens),
-- as memcached 1.6.30 and later expect startfiles to be.
--
-- Three zones of one memcached server each: the first is the local zone.
-- Reads go to the local zone; on a miss, to every far zone at once, and the
-- first hit wins. Writes go to every zone at once; the client gets the
-- local zone's answer once all have answered.
--
-- Run: memroute --config examples/funcgen-zones.lua \
--          --config-arg 127.0.0.1:11212,127.0.0.1:11213,127.0.0.1:11214
-- (-o proxy_config=examples/funcgen-zones.lua works too; give the list with --config-arg:
-- memcached's proxy_arg turns a value holding ":" into a table.)

function mcp_config_pools()
    -- Defaults for every backend below (memcached's global setters).
    mcp.backend_connect_timeout(2)
    mcp.backend_read_timeout(1)
    mcp.backend_failure_limit(3)
    local zones = {}
    for hp in string.gmatch(mcp.start_arg or "", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        local label = "zone" .. (#zones + 1)
        table.insert(zones, mcp.pool({ mcp.backend(label, host, tonumber(port)) }))
    end
    assert(#zones >= 2, "give two or more host:port zones, the local one first")
    return zones
end

-- Called once per request slot: the returned function serves requests.
local function read_slot(rctx, handles)
    local near = handles[1]
    local far = { table.unpack(handles, 2) }
    return function(r)
        local res = rctx:enqueue_and_wait(r, near)
        if res:hit() then
            return res
        end
        rctx:enqueue(r, far)
        rctx:wait_cond(1, mcp.WAIT_GOOD)
        for _, h in ipairs(far) do
            local good = rctx:res_good(h)
            if good then
                return good
            end
        end
        return res
    end
end

local function write_slot(rctx, handles)
    return function(r)
        rctx:enqueue(r, handles)
        rctx:wait_cond(#handles, mcp.WAIT_ANY)
        return rctx:res_any(handles[1])
    end
end

-- A funcgen with a handle per zone, making slots with `slot`.
local function zoned(name, zones, slot)
    local fgen = mcp.funcgen_new()
    local handles = {}
    for i, pool in ipairs(zones) do
        handles[i] = fgen:new_handle(pool)
    end
    fgen:ready({ n = name, a = handles, f = slot })
    return fgen
end

function mcp_config_routes(zones)
    mcp.attach(mcp.CMD_ANY_STORAGE, zoned("zone_writes", zones, write_slot))
    local reads = zoned("zone_reads", zones, read_slot)
    for _, cmd in ipairs({ mcp.CMD_GET, mcp.CMD_GETS, mcp.CMD_MG }) do
        mcp.attach(cmd, reads)
    end
end
