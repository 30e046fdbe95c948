-- Key-prefix routing with memcached's router object (mcp.router_new,
-- memcached 1.6.30 and later): keys "foo/..." go to pool foo, keys
-- "bar/..." to pool bar, and every other key to the default pool.
--
-- Run: memroute --config examples/funcgen-prefix-router.lua --config-arg \
--   'foo=127.0.0.1:11212,127.0.0.1:11213;bar=127.0.0.1:11214;default=127.0.0.1:11215'
-- (-o proxy_config=examples/funcgen-prefix-router.lua works too; give the list with --config-arg:
-- memcached's proxy_arg turns a value holding ":" into a table.)
-- The start argument names the pools: "name=host:port,...;name=...". It
-- must name a pool "default"; every other name becomes a key prefix.

function mcp_config_pools()
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
    assert(pools.default, "start argument: name a pool 'default'")
    return pools
end

-- A funcgen that sends every request to one pool.
local function direct(name, pool)
    local fgen = mcp.funcgen_new()
    local handle = fgen:new_handle(pool)
    fgen:ready({ n = name, a = handle, f = function(rctx, h)
        return function(r)
            return rctx:enqueue_and_wait(r, h)
        end
    end })
    return fgen
end

function mcp_config_routes(pools)
    local map = {}
    for name, pool in pairs(pools) do
        if name ~= "default" then
            map[name] = direct(name, pool)
        end
    end
    -- The router reads the key up to the first "/" (mode "prefix", stop
    -- "/", the defaults) and looks that part up in the map. No separator,
    -- or a part the map lacks, takes the default. The map is walked in C
    -- (in memroute, in Rust): no Lua runs to pick the route.
    local router = mcp.router_new({
        map = map,
        mode = "prefix",
        stop = "/",
        default = direct("default", pools.default),
    })
    mcp.attach(mcp.CMD_ANY_STORAGE, router)
end
