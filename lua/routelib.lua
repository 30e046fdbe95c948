-- memroute's route library: the configuration vocabulary of memcached's
-- routelib (settings{}, pools{}, routes{}, route_*{}), run by memroute's
-- native route handlers instead of Lua.
--
--   memroute -o proxy_config=routelib,proxy_arg=routes.lua
--   memroute --routes routes.lua
--
-- This file runs on the config VM only. It reads the route file, makes the
-- pools with mcp.backend / mcp.pool, resolves every child name to its pool,
-- and returns a description that memroute checks and builds into native
-- route handlers on every worker (no Lua runs per request). Every route
-- handler and map remembers the file and line it was written at, so a
-- mistake found later is reported there.

-- routes: one routes{} section per tag, in file order; the untagged one
-- (tag = nil) serves untagged listeners and what a tag has no route for.
local conf = { pools = {}, routes = {}, settings = nil, zone = nil, verbose = false }

-- "file:line" of the caller `level` frames up. (The VM has no debug
-- library; error() at a level prefixes exactly that position.)
local function where(level)
    local _, message = pcall(error, "", level + 2)
    local at = tostring(message):match("^(.*):%s*$")
    return at or "?"
end

local function fail(at, message)
    error(at .. ": " .. message, 0)
end

-- The handlers memroute builds natively.
local HANDLERS = {
    "direct", "allsync", "allasync", "allfastest", "split", "failover",
    "zfailover", "ttl", "null", "random", "ratelim",
    -- memroute's additions (mcrouter's route handles, routelib's style)
    "allmajority", "error", "shadow", "warmup", "l1l2", "migrate",
    "bigvalue", "keysplit",
}

for _, name in ipairs(HANDLERS) do
    _G["route_" .. name] = function(args)
        local at = where(2)
        if args ~= nil and type(args) ~= "table" then
            fail(at, "route_" .. name .. " takes a table of options")
        end
        return { __route = name, __where = at, args = args or {} }
    end
end

-- Handlers written in Lua, as routelib has them: a library loaded with
-- `-o proxy_config=routelib:LIB.lua` calls register_route_handlers{ "name" }
-- and defines route_name_conf(args, ctx) (run here, on the config VM) and
-- route_name_start(args, ctx, fgen) (run on every worker VM, where it makes
-- a funcgen). The handler is a node of the native route tree; its children
-- (options named child*) may be pools or native handlers.
local BUILTIN = {}
for _, name in ipairs(HANDLERS) do
    BUILTIN[name] = true
end

function register_route_handlers(names)
    local at = where(2)
    if type(names) ~= "table" then
        fail(at, "register_route_handlers takes a list of handler names")
    end
    for _, name in pairs(names) do
        if type(name) ~= "string" or not name:match("^[%w_]+$") then
            fail(at, "register_route_handlers: handler names are words, not " .. tostring(name))
        end
        if BUILTIN[name] then
            fail(at, "register_route_handlers: route_" .. name .. " is a built-in handler")
        end
        _G["route_" .. name] = function(args)
            local here = where(2)
            if args ~= nil and type(args) ~= "table" then
                fail(here, "route_" .. name .. " takes a table of options")
            end
            return { __route = "user", __handler = name, __where = here, args = args or {} }
        end
    end
end

-- Command names routelib accepts in cmdmap{} and routes{ cmap = }.
local COMMANDS = {
    mg = mcp.CMD_MG, ms = mcp.CMD_MS, md = mcp.CMD_MD, mn = mcp.CMD_MN,
    ma = mcp.CMD_MA, me = mcp.CMD_ME, get = mcp.CMD_GET, gat = mcp.CMD_GAT,
    set = mcp.CMD_SET, add = mcp.CMD_ADD, cas = mcp.CMD_CAS, gets = mcp.CMD_GETS,
    gats = mcp.CMD_GATS, incr = mcp.CMD_INCR, decr = mcp.CMD_DECR,
    touch = mcp.CMD_TOUCH, append = mcp.CMD_APPEND, delete = mcp.CMD_DELETE,
    replace = mcp.CMD_REPLACE, prepend = mcp.CMD_PREPEND, all = mcp.CMD_ANY_STORAGE,
}

local function command_ids(t, at, what)
    local out = {}
    for k, v in pairs(t) do
        local id = k
        if type(k) == "string" then
            id = COMMANDS[k]
            if id == nil then
                fail(at, what .. ": unknown command '" .. k .. "'")
            end
        elseif type(k) ~= "number" then
            fail(at, what .. ": keys must be command names or mcp.CMD_* ids")
        end
        out[id] = v
    end
    return out
end

function cmdmap(t)
    local at = where(2)
    if type(t) ~= "table" then
        fail(at, "cmdmap takes a table of commands to route handlers")
    end
    return { __cmdmap = command_ids(t, at, "cmdmap"), __where = at }
end

function settings(t)
    conf.settings = t
    conf.settings_at = where(2)
end

function pools(t)
    local at = where(2)
    for name, p in pairs(t) do
        conf.pools[name] = { def = p, at = at }
    end
end

function routes(t)
    local at = where(2)
    if type(t) ~= "table" then
        fail(at, "routes takes a table (map, cmap, default, conf)")
    end
    if t.tag ~= nil and type(t.tag) ~= "string" then
        fail(at, "routes: tag must be a string (a listener's -l tag_NAME_:...)")
    end
    for _, other in ipairs(conf.routes) do
        if other.tag == t.tag then
            local which = t.tag and ("tag '" .. t.tag .. "'") or "untagged"
            fail(at, "routes: a second " .. which .. " routes{} section (the first is at "
                .. other.__where .. ")")
        end
    end
    t.__where = at
    table.insert(conf.routes, t)
end

function local_zone(zone)
    conf.zone = zone
end

function verbose(on)
    conf.verbose = on
end

function debug(_) end

function say(...)
    if conf.verbose then
        print(...)
    end
end

function dsay(...) end

-- settings{} names routelib accepts, and the mcp setter each calls.
local SETTINGS = {
    backend_connect_timeout = "backend_connect_timeout",
    backend_retry_waittime = "backend_retry_waittime",
    backend_retry_timeout = "backend_retry_timeout",
    backend_read_timeout = "backend_read_timeout",
    backend_failure_limit = "backend_failure_limit",
    backend_depth_limit = "backend_depth_limit",
    backend_flap_time = "backend_flap_time",
    backend_flap_backoff_ramp = "backend_flap_backoff_ramp",
    backend_flap_backoff_max = "backend_flap_backoff_max",
    backend_use_tls = "backend_use_tls",
    tcp_keepalive = "tcp_keepalive",
    active_request_limit = "active_req_limit",
    active_req_limit = "active_req_limit",
    buffer_memory_limit = "buffer_memory_limit",
}

local function apply_settings()
    local s = conf.settings
    if s == nil then
        return {}
    end
    local at = conf.settings_at
    local pool_options = {}
    for name, value in pairs(s) do
        if name == "pool_options" then
            pool_options = value
        else
            local setter = SETTINGS[name]
            if setter == nil then
                fail(at, "settings: unknown setting '" .. tostring(name) .. "'")
            end
            if mcp[setter] == nil then
                fail(at, "settings: " .. name .. " is not supported by memroute")
            end
            mcp[setter](value)
            if name == "backend_use_tls" and value and mcp.init_tls then
                mcp.init_tls()
            end
        end
    end
    return pool_options
end

-- A backend as routelib writes it: "host:port", "host:port label",
-- either with " _down_" at the end, or a table of mcp.backend options.
local function make_backend(entry, options, at, pool)
    local b = {}
    for k, v in pairs(options or {}) do
        b[k] = v
    end
    if type(entry) == "table" then
        for k, v in pairs(entry) do
            b[k] = v
        end
        if b.host == nil then
            fail(at, "pool " .. pool .. ": a backend table needs host")
        end
    elseif type(entry) == "string" then
        local text = entry
        if text:match("%s+_down_$") then
            b.down = true
            text = text:gsub("%s+_down_$", "")
        end
        local host, port, label = text:match("^(.+):(%d+)%s+(%S+)$")
        if host == nil then
            host, port = text:match("^(.+):(%d+)$")
        end
        if host == nil then
            fail(at, "pool " .. pool .. ": '" .. entry .. "' is not host:port [label]")
        end
        b.host, b.port, b.label = host, tonumber(port), label
    else
        fail(at, "pool " .. pool .. ": backends are strings or tables")
    end
    b.port = b.port or 11211
    b.label = b.label or (b.host .. ":" .. b.port)
    return mcp.backend(b)
end

local function make_pool(name, def, pool_options, at)
    if type(def) ~= "table" or type(def.backends) ~= "table" then
        fail(at, "pool " .. name .. ": needs backends = { ... }")
    end
    local opts = {}
    for k, v in pairs(pool_options) do
        opts[k] = v
    end
    for k, v in pairs(def.options or {}) do
        opts[k] = v
    end
    if opts.name == nil then
        opts.name = name
    end
    local list = {}
    for _, entry in ipairs(def.backends) do
        table.insert(list, make_backend(entry, def.backend_options, at, name))
    end
    return mcp.pool(list, opts)
end

local function make_pools(pool_options)
    local made = {}
    for name, p in pairs(conf.pools) do
        if type(name) ~= "string" then
            fail(p.at, "pools: pool names must be strings")
        end
        if name:find("^set_") then
            local set = {}
            for zone, def in pairs(p.def) do
                set[zone] = make_pool(name .. "_" .. zone, def, pool_options, p.at)
            end
            made[name] = { set = set }
        else
            made[name] = { pool = make_pool(name, p.def, pool_options, p.at) }
        end
    end
    return made
end

-- A child name: a pool, a pool set ("set_x": its zones as a table), one
-- zone of a set ("set_x_zone"), or "internal" (the embedded cache) unless a
-- pool has that name.
local function resolve_name(name, made, at)
    local p = made[name]
    if p ~= nil then
        return p.pool or p.set
    end
    if name == "internal" then
        -- memroute's embedded cache, e.g. as route_l1l2's near cache.
        return { __route = "internal", __where = at, args = {} }
    end
    local set, zone = name:match("^(set_[%w]+)_(.+)$")
    if set and made[set] and made[set].set and made[set].set[zone] then
        return made[set].set[zone]
    end
    fail(at, "no pool named '" .. name .. "'")
end

local resolve_route

-- `label` and `cmd` are what the handlers of this tree get from ctx:label()
-- and ctx:cmd(): the map entry and the command the tree is built for
-- (mcp.CMD_ANY_STORAGE unless a cmdmap or cmap names one), as routelib
-- builds one tree per command of a command map.
local function resolve_child(value, made, at, label, cmd)
    if type(value) == "string" then
        return resolve_name(value, made, at)
    elseif type(value) == "table" and value.__route then
        return resolve_route(value, made, label, cmd)
    elseif type(value) == "table" then
        local out = {}
        for k, v in pairs(value) do
            out[k] = resolve_child(v, made, at, label, cmd)
        end
        return out
    end
    fail(at, "a child must be a pool name or a route handler")
end

-- Stat counter ids user handlers asked for (ctx:get_stats_id), by name;
-- memroute's own counters take the ids after these.
local user_stats = { next = 1, ids = {} }

local function stats_id(name)
    if type(name) ~= "string" or name == "" then
        error("get_stats_id takes a counter name", 2)
    end
    local id = user_stats.ids[name]
    if id == nil then
        id = user_stats.next
        user_stats.next = id + 1
        user_stats.ids[name] = id
        mcp.add_stat(id, name)
    end
    return id
end

-- What a user handler's _conf function gets as ctx (routelib's methods).
local function conf_ctx(label, cmd)
    return {
        label = function(_) return label end,
        cmd = function(_) return cmd end,
        local_zone = function(_) return conf.zone end,
        get_stats_id = function(_, name) return stats_id(name) end,
        stats_get_id = function(_, name) return stats_id(name) end,
    }
end

resolve_route = function(r, made, label, cmd)
    local args = {}
    for k, v in pairs(r.args) do
        if type(k) == "string" and k:find("^child") then
            args[k] = resolve_child(v, made, r.__where, label, cmd)
        else
            args[k] = v
        end
    end
    if r.__route == "user" then
        local name = r.__handler
        local configure = _G["route_" .. name .. "_conf"]
        if type(configure) ~= "function" then
            fail(r.__where, "route_" .. name .. ": no function route_" .. name
                .. "_conf (define it in the handler library)")
        end
        local ok, out = pcall(configure, args, conf_ctx(label, cmd))
        if not ok then
            fail(r.__where, "route_" .. name .. "_conf: " .. tostring(out))
        end
        if type(out) ~= "table" then
            fail(r.__where, "route_" .. name .. "_conf must return a table")
        end
        return { __route = "user", __handler = name, __label = label, __cmd = cmd,
                 __where = r.__where, args = out }
    end
    return { __route = r.__route, __where = r.__where, args = args }
end

local function resolve_entry(value, made, at, label)
    if type(value) == "table" and value.__cmdmap then
        local out = {}
        for id, r in pairs(value.__cmdmap) do
            out[id] = resolve_child(r, made, value.__where, label, id)
        end
        return { __cmdmap = out, __where = value.__where }
    end
    return resolve_child(value, made, at, label, mcp.CMD_ANY_STORAGE)
end

-- One routes{} section with every child resolved to its pool.
local function resolve_tree(r, made)
    local tree = { __where = r.__where, conf = r.conf or {}, tag = r.tag }
    if r.map ~= nil then
        tree.map = {}
        for prefix, entry in pairs(r.map) do
            tree.map[prefix] = resolve_entry(entry, made, r.__where, tostring(prefix))
        end
    end
    if r.cmap ~= nil then
        tree.cmap = {}
        for id, entry in pairs(command_ids(r.cmap, r.__where, "routes cmap")) do
            tree.cmap[id] = resolve_child(entry, made, r.__where, "cmdmap", id)
        end
    end
    if r.default ~= nil then
        tree.default = resolve_child(r.default, made, r.__where, "default",
            mcp.CMD_ANY_STORAGE)
    end
    return tree
end

function mcp_config_pools()
    local file = mcp.start_arg
    if type(file) ~= "string" then
        error("routelib: give the route file with -o proxy_arg=FILE (or --routes FILE)", 0)
    end
    dofile(file)
    if #conf.routes == 0 then
        error(file .. ": no routes{} section", 0)
    end
    local made = make_pools(apply_settings())
    local trees = {}
    for _, r in ipairs(conf.routes) do
        table.insert(trees, resolve_tree(r, made))
    end
    -- Every pool, routed to or not: flush_all empties them all, and the
    -- configuration digest lists them.
    local all = {}
    for name, p in pairs(made) do
        all[name] = p.pool or p.set
    end
    return { __memroute_routelib = { trees = trees, pools = all, zone = conf.zone } }
end