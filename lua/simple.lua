-- simple.lua: the common routing setups in a few declarative lines.
--
-- Use it as the startfile, with your configuration file as the argument:
--   memroute --config simple.lua --config-arg mypools.lua
-- (memcached style: -o proxy_config=simple.lua,proxy_arg=mypools.lua)
-- where mypools.lua calls pool{}, router{} and my_zone() at top level; or
-- require it from your own startfile:
--   local simple = require("simple")
--   simple.pool{ name = "main", backends = { "127.0.0.1:11212" } }
--   simple.router{ router_type = "flat", default_pool = "main" }
--
-- pool{ name = "foo", backends = { "host:port", ... } }
-- pool{ name = "foo", zones = { z1 = { "host:port" }, z2 = { ... } } }
--   Optional: dist = "jump"|"ketama"|"maglev"|... and hash = "md5"|...,
--   as mcp.pool takes them.
-- router{ router_type = "keyprefix" (default) | "flat",
--         match_prefix = "/(%a+)/", default_pool = "foo" }
--   keyprefix sends a key "/foo/..." to pool "foo"; keys that match no pool
--   go to default_pool, or get "SERVER_ERROR no route" without one.
-- my_zone("z1")
--   With zones, writes go to every zone (the reply is the first error, if
--   any, else the local zone's); reads go to the local zone and, on a miss,
--   to all far zones at once; the first hit wins.

local M = {}

local pools = {}
local pool_order = {}
local router_conf = { router_type = "keyprefix", match_prefix = "/(%a+)/" }
local local_zone = nil

local function parse_hostport(s)
    local host, port = string.match(s, "^%[?([^%]]+)%]?:(%d+)$")
    if host == nil then
        host, port = s, "11211"
    end
    return host, tonumber(port)
end

function M.pool(t)
    if type(t) ~= "table" or type(t.name) ~= "string" then
        error("pool{}: a name is required", 2)
    end
    if pools[t.name] ~= nil then
        error("pool{}: pool '" .. t.name .. "' is defined twice", 2)
    end
    if (t.backends == nil) == (t.zones == nil) then
        error("pool{}: pool '" .. t.name .. "' needs either backends or zones", 2)
    end
    pools[t.name] = t
    table.insert(pool_order, t.name)
end

function M.router(t)
    if type(t) ~= "table" then
        error("router{}: expected a table", 2)
    end
    for k, v in pairs(t) do
        router_conf[k] = v
    end
    local rt = router_conf.router_type
    if rt ~= "keyprefix" and rt ~= "flat" then
        error("router{}: router_type must be \"keyprefix\" or \"flat\"", 2)
    end
end

function M.my_zone(z)
    if type(z) ~= "string" then
        error("my_zone(): expected a zone name", 2)
    end
    local_zone = z
end

-- Config VM: turn the declarations into mcp pools.
local function make_pool(name, list, conf)
    local backends = {}
    for i, hp in ipairs(list) do
        local host, port = parse_hostport(hp)
        table.insert(backends, mcp.backend(name .. ":" .. hp, host, port))
    end
    local opts = {}
    if conf.dist then opts.dist = conf.dist end
    if conf.hash then opts.hash = conf.hash end
    return mcp.pool(backends, opts)
end

function mcp_config_pools()
    local out = { pools = {}, router = router_conf, zone = local_zone }
    for _, name in ipairs(pool_order) do
        local conf = pools[name]
        if conf.backends then
            out.pools[name] = { pool = make_pool(name, conf.backends, conf) }
        else
            local zones = {}
            for zname, list in pairs(conf.zones) do
                zones[zname] = make_pool(name .. "/" .. zname, list, conf)
            end
            out.pools[name] = { zones = zones }
        end
    end
    if router_conf.default_pool and out.pools[router_conf.default_pool] == nil then
        error("router{}: default_pool '" .. router_conf.default_pool .. "' is not a pool")
    end
    return out
end

-- Worker VMs: build one route function per pool, then the router.
local READS = {
    [mcp.CMD_GET] = true, [mcp.CMD_GETS] = true, [mcp.CMD_GAT] = true,
    [mcp.CMD_GATS] = true, [mcp.CMD_MG] = true, [mcp.CMD_ME] = true,
}

local function zoned_route(zones, my)
    local near = zones[my]
    local far = {}
    local all = {}
    if near ~= nil then table.insert(all, near) end
    for zname, p in pairs(zones) do
        if zname ~= my then
            table.insert(far, p)
            table.insert(all, p)
        end
    end
    if near == nil then
        -- No local zone here: treat every zone as far.
        return function(r)
            if READS[r:command()] then
                local res = mcp.await(r, all, #all, mcp.AWAIT_FASTGOOD)
                for _, x in ipairs(res) do
                    if x:hit() then return x end
                end
                return res[1]
            end
            local res = mcp.await(r, all, 0, mcp.AWAIT_ANY)
            for _, x in ipairs(res) do
                if not x:ok() then return x end
            end
            return res[1]
        end
    end
    return function(r)
        if READS[r:command()] then
            local res = near(r)
            if res:hit() or #far == 0 then
                return res
            end
            local others = mcp.await(r, far, #far, mcp.AWAIT_FASTGOOD)
            for _, x in ipairs(others) do
                if x:hit() then return x end
            end
            return res
        end
        -- The local zone first, so its reply is the one returned (the
        -- results of mcp.await come in arrival order, which says nothing
        -- about the zone); then every far zone at once.
        local res = near(r)
        if #far > 0 then
            local others = mcp.await(r, far, 0, mcp.AWAIT_ANY)
            if not res:ok() then return res end
            for _, x in ipairs(others) do
                if not x:ok() then return x end
            end
        end
        return res
    end
end

function mcp_config_routes(c)
    local routes = {}
    for name, p in pairs(c.pools) do
        if p.pool then
            -- A pool is callable like a route; attached as it is (the flat
            -- router), it runs no Lua per request.
            routes[name] = p.pool
        else
            if c.zone == nil then
                error("simple: pool '" .. name .. "' has zones; call my_zone() to say which is local")
            end
            routes[name] = zoned_route(p.zones, c.zone)
        end
    end
    local conf = c.router
    local default = conf.default_pool and routes[conf.default_pool]
    local no_route = "SERVER_ERROR no route\r\n"
    local top
    if conf.router_type == "flat" then
        if default == nil then
            error("simple: a flat router needs default_pool")
        end
        top = default
    else
        local pattern = conf.match_prefix
        top = function(r)
            local key = r:key()
            local prefix = key and string.match(key, pattern)
            local route = (prefix and routes[prefix]) or default
            if route == nil then
                return no_route
            end
            return route(r)
        end
    end
    mcp.attach(mcp.CMD_ANY_STORAGE, top)
end

-- As the startfile: load the operator's declarations, given as the start
-- argument, with pool/router/my_zone as globals.
pool = M.pool
router = M.router
my_zone = M.my_zone
if type(mcp.start_arg) == "string" and ... == nil then
    dofile(mcp.start_arg)
end

return M
