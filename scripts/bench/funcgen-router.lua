-- Benchmark startfile: funcgen-route.lua's route behind an mcp.router_new
-- prefix map (two mapped prefixes and a default; memcaslap's keys have no
-- "/", so every request takes the default after the router's scan).
--
--   scripts/instructions-per-op.sh --config scripts/bench/funcgen-router.lua --config-arg {backend}

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("b" .. (#backends + 1), host, tonumber(port)))
    end
    return { main = mcp.pool(backends) }
end

local function direct(pool, name)
    local fgen = mcp.funcgen_new()
    local handle = fgen:new_handle(pool)
    fgen:ready({
        n = name,
        f = function(rctx)
            return function(r)
                return rctx:enqueue_and_wait(r, handle)
            end
        end,
    })
    return fgen
end

function mcp_config_routes(pools)
    local router = mcp.router_new({
        map = {
            users = direct(pools.main, "users"),
            sessions = direct(pools.main, "sessions"),
        },
        mode = "prefix",
        stop = "/",
        default = direct(pools.main, "default"),
    })
    mcp.attach(mcp.CMD_ANY_STORAGE, router)
end
