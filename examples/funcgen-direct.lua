-- One pool of memcached servers, written with memcached's current proxy
-- API (function generators, memcached 1.6.30 and later): every command
-- with a key goes to the backend its key hashes to.
--
-- Run: memroute --config examples/funcgen-direct.lua \
--               --config-arg 127.0.0.1:11212,127.0.0.1:11213
-- (-o proxy_config=examples/funcgen-direct.lua works too; give the list with --config-arg:
-- memcached's proxy_arg turns a value holding ":" into a table.)
-- The backends come from the start argument, a comma-separated host:port
-- list, so the same file serves tests and production.

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        assert(host, "start argument: expected host:port, got " .. hp)
        table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
    end
    -- What mcp_config_pools returns is copied into every worker.
    return { main = mcp.pool(backends) }
end

-- The generator: called once for each request slot (a request running at
-- once), with the slot's request context and the `a` given to fgen:ready.
-- The function it returns serves one request at a time, again and again.
local function direct_slot(rctx, handle)
    return function(r)
        return rctx:enqueue_and_wait(r, handle)
    end
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    -- A handle is the funcgen's reference to a pool; slots send to it.
    local handle = fgen:new_handle(pools.main)
    fgen:ready({ n = "direct", a = handle, f = direct_slot })
    -- Commands without a key (stats, version, flush_all) are answered by
    -- the proxy itself.
    mcp.attach(mcp.CMD_ANY_STORAGE, fgen)
end
