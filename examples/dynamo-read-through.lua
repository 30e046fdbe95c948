-- A read-through cache in front of a DynamoDB table: DynamoDB is
-- authoritative and every write goes to it first (write-through); the
-- cached copy of a written key is then invalidated. Reads are served by
-- memcached, and a miss reads the table and fills memcached with a short
-- TTL (FILL_TTL, default 60 s). See lua/tier.lua and docs/dynamodb.md.
--
-- The memcached servers are the start argument (host:port,...); the table
-- comes from the environment as in dynamo-only.lua.
--
-- Run: DDB_ENDPOINT=http://127.0.0.1:8000 DDB_CREATE_TABLE=1 \
--      memroute --config examples/dynamo-read-through.lua \
--               --config-arg 127.0.0.1:11212

local tier = require("tier")

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("mc" .. (#backends + 1), host, tonumber(port)))
    end
    return {
        cache = mcp.pool(backends),
        table = mcp.dynamo_pool{
            table = os.getenv("DDB_TABLE") or "memroute",
            region = os.getenv("DDB_REGION"),
            endpoint = os.getenv("DDB_ENDPOINT"),
            create_table = os.getenv("DDB_CREATE_TABLE") == "1",
            write = "through",
        },
    }
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_ANY_STORAGE, tier.route{
        cache = pools.cache,
        store = pools.table,
        fill_ttl = tonumber(os.getenv("FILL_TTL") or "60"),
        writes = "store_first",
    })
end
