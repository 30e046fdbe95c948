-- One pool of memcached servers: every command with a key goes to the
-- backend its key hashes to, and flush_all goes to every backend.
--
-- Run: memroute --config examples/single-pool.lua \
--               --config-arg 127.0.0.1:11212,127.0.0.1:11213
-- The backends come from the start argument (a comma-separated host:port
-- list) so the same file serves tests and production.

local function backends_from_arg()
    local list = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(list, mcp.backend("b" .. (#list + 1), host, tonumber(port)))
    end
    return list
end

function mcp_config_pools()
    local backends = backends_from_arg()
    -- One single-backend pool per server, to reach all of them at once.
    local each = {}
    for _, b in ipairs(backends) do
        table.insert(each, mcp.pool({ b }))
    end
    return { main = mcp.pool(backends), each = each }
end

function mcp_config_routes(pools)
    local main = pools.main
    local each = pools.each
    -- A pool attached directly runs no Lua per request; it answers as
    -- `function(r) return main(r) end` would, for less CPU.
    mcp.attach(mcp.CMD_ANY_STORAGE, main)
    mcp.attach(mcp.CMD_FLUSH_ALL, function(r)
        local results = mcp.await(r, each, 0, mcp.AWAIT_ANY)
        for _, res in ipairs(results) do
            if not res:ok() then return res end
        end
        return results[1]
    end)
end
