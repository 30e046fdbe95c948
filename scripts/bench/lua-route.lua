-- Benchmark startfile (scripts/instructions-per-op.sh, bench.sh): one pool
-- of the backends in the start argument, served by the smallest Lua route,
-- so the count is the Lua route's cost over the pool attached directly.
--
--   scripts/instructions-per-op.sh --config scripts/bench/lua-route.lua --config-arg {backend}

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
    end
    return { main = mcp.pool(backends) }
end

function mcp_config_routes(pools)
    local main = pools.main
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return main(r) end)
end
