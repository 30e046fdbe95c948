-- Declarations for lua/simple.lua: one pool replicated in two zones.
-- Writes go to both zones; reads go to the local zone (my_zone) and, on a
-- miss there, to the other zone; the first hit wins.
--
-- Run: memroute --config lua/simple.lua --config-arg examples/simple-zones.lua
-- (memcached style: -o proxy_config=lua/simple.lua,proxy_arg=examples/simple-zones.lua)
--
-- The backend lists and the local zone are read from environment
-- variables, so the same file serves tests (which start memcached on free
-- ports and set the variables) and hand runs (which get the defaults):
--   MEMROUTE_ZONE1_BACKENDS  host:port list of zone z1 (default 127.0.0.1:11212)
--   MEMROUTE_ZONE2_BACKENDS  host:port list of zone z2 (default 127.0.0.1:11213)
--   MEMROUTE_MY_ZONE         the zone this proxy runs in (default z1)
-- simple.lua loads this file in every Lua VM (config and workers), so the
-- variables must be set in memroute's environment.

local function hosts(var, default)
    local list = {}
    for hp in string.gmatch(os.getenv(var) or default, "[^,]+") do
        table.insert(list, hp)
    end
    return list
end

pool{
    name = "main",
    zones = {
        z1 = hosts("MEMROUTE_ZONE1_BACKENDS", "127.0.0.1:11212"),
        z2 = hosts("MEMROUTE_ZONE2_BACKENDS", "127.0.0.1:11213"),
    },
}

router{ router_type = "flat", default_pool = "main" }

my_zone(os.getenv("MEMROUTE_MY_ZONE") or "z1")
