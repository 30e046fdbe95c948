-- Key-prefix routing to two pools: keys "/foo/..." go to pool foo, keys
-- "/bar/..." to pool bar; any other key gets "SERVER_ERROR no route".
--
-- Run: memroute --config examples/keyprefix.lua \
--   --config-arg 'foo=127.0.0.1:11212,127.0.0.1:11213;bar=127.0.0.1:11214'
-- The pools come from the start argument ("name=host:port,...;name=...")
-- so the same file serves tests (which pass their own ports) and
-- production. Every pool named in the argument gets a "/name/" prefix.

local function pools_from_arg()
    local arg = mcp.start_arg or "foo=127.0.0.1:11212;bar=127.0.0.1:11213"
    local out = {}
    for name, list in string.gmatch(arg, "(%w+)=([^;]+)") do
        local backends = {}
        for hp in string.gmatch(list, "[^,]+") do
            local host, port = string.match(hp, "^(.+):(%d+)$")
            table.insert(backends, mcp.backend(name .. (#backends + 1), host, tonumber(port)))
        end
        out[name] = mcp.pool(backends)
    end
    return out
end

function mcp_config_pools()
    return pools_from_arg()
end

function mcp_config_routes(pools)
    -- One route function per pool, built once here (not per request).
    local routes = {}
    for name, pool in pairs(pools) do
        routes[name] = function(r) return pool(r) end
    end
    local no_route = "SERVER_ERROR no route\r\n"
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        local prefix = string.match(r:key(), "^/(%w+)/")
        local route = prefix and routes[prefix]
        if route == nil then
            return no_route
        end
        return route(r)
    end)
end
