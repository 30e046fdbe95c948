-- Routes as closures, the pattern from memcached's proxy route API
-- discussion: a function that builds and returns the route function, with
-- everything the route needs (here a fixed reply string, or a pool)
-- captured once at configuration time, so nothing is allocated per request.
--
-- Keys "/app/..." go to the real pool; every other key falls back to the
-- route made by new_route(), which answers "SERVER_ERROR no route".
--
-- Run: memroute --config examples/closure.lua \
--               --config-arg 127.0.0.1:11212,127.0.0.1:11213
-- The backends come from the start argument (a comma-separated host:port
-- list), as in single-pool.lua, so tests can pass their own ports.

function new_route()
    local res = "SERVER_ERROR no route\r\n"
    return function(r)
        return res
    end
end

function new_pool_route(pool)
    return function(r)
        return pool(r)
    end
end

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
    end
    return { app = mcp.pool(backends) }
end

function mcp_config_routes(pools)
    local routes = { app = new_pool_route(pools.app) }
    local fallback = new_route()
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        local prefix = string.match(r:key(), "^/(%w+)/")
        return (routes[prefix] or fallback)(r)
    end)
end
