-- Benchmark startfile: the same route as lua-route.lua in memcached's
-- funcgen API (one slot function per request, rctx:enqueue_and_wait on one
-- pool handle).
--
--   scripts/instructions-per-op.sh --config scripts/bench/funcgen-route.lua --config-arg {backend}

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
    end
    return { main = mcp.pool(backends) }
end

function mcp_config_routes(pools)
    local fgen = mcp.funcgen_new()
    local handle = fgen:new_handle(pools.main)
    fgen:ready({
        n = "main",
        f = function(rctx)
            return function(r)
                return rctx:enqueue_and_wait(r, handle)
            end
        end,
    })
    mcp.attach(mcp.CMD_ANY_STORAGE, fgen)
end
