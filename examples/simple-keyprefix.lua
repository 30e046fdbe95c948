-- Declarations for lua/simple.lua: two pools and a key-prefix router.
-- Keys "/foo/..." go to pool foo, "/bar/..." to pool bar, anything else to
-- the default pool (foo).
--
-- Run: memroute --config lua/simple.lua --config-arg examples/simple-keyprefix.lua
-- (memcached style: -o proxy_config=lua/simple.lua,proxy_arg=examples/simple-keyprefix.lua)
--
-- The backend lists are read from environment variables, so the same file
-- serves tests (which start memcached on free ports and set the variables)
-- and hand runs (which get the defaults):
--   MEMROUTE_FOO_BACKENDS  comma-separated host:port list (default 127.0.0.1:11212,127.0.0.1:11213)
--   MEMROUTE_BAR_BACKENDS  (default 127.0.0.1:11214)
-- simple.lua loads this file in every Lua VM (config and workers), so the
-- variables must be set in memroute's environment.

local function hosts(var, default)
    local list = {}
    for hp in string.gmatch(os.getenv(var) or default, "[^,]+") do
        table.insert(list, hp)
    end
    return list
end

pool{ name = "foo", backends = hosts("MEMROUTE_FOO_BACKENDS", "127.0.0.1:11212,127.0.0.1:11213") }
pool{ name = "bar", backends = hosts("MEMROUTE_BAR_BACKENDS", "127.0.0.1:11214") }

router{ router_type = "keyprefix", match_prefix = "/(%a+)/", default_pool = "foo" }
