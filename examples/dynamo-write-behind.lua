-- A memcached tier backed by DynamoDB, write-behind: memcached serves
-- every read and is authoritative; each write that changes an item is
-- copied to DynamoDB through a write-behind queue (the client does not wait
-- for DynamoDB). A read that misses memcached falls back to the table and
-- refills memcached. See lua/tier.lua and docs/dynamodb.md.
--
-- The memcached servers are the start argument (host:port,...); the table
-- comes from the environment as in dynamo-only.lua (DDB_TABLE, DDB_REGION,
-- DDB_ENDPOINT, DDB_CREATE_TABLE), plus FILL_TTL (seconds a refilled item
-- stays in memcached, default 300), WARM=1 (copy the whole table into
-- memcached at start, in the background, progress in the log) and
-- DDB_BATCH_WRITES=1 (send queued writes in BatchWriteItem calls: much less
-- work for DynamoDB, but per-key order holds within this proxy only; see
-- batch_writes in docs/dynamodb.md), with DDB_BATCH_LINGER (seconds the
-- writer waits to fill a batch, default 0.005), and DDB_WRITER ("sdk", the
-- default, or "direct": what sends the queued writes; docs/dynamodb.md).
--
-- Run: DDB_ENDPOINT=http://127.0.0.1:8000 DDB_CREATE_TABLE=1 \
--      memroute --config examples/dynamo-write-behind.lua \
--               --config-arg 127.0.0.1:11212

local tier = require("tier")

function mcp_config_pools()
    local backends = {}
    for hp in string.gmatch(mcp.start_arg or "127.0.0.1:11212", "[^,]+") do
        local host, port = string.match(hp, "^(.+):(%d+)$")
        table.insert(backends, mcp.backend("mc" .. (#backends + 1), host, tonumber(port)))
    end
    local batched = os.getenv("DDB_BATCH_WRITES") == "1"
    return {
        cache = mcp.pool(backends),
        table = mcp.dynamo_pool{
            table = os.getenv("DDB_TABLE") or "memroute",
            region = os.getenv("DDB_REGION"),
            endpoint = os.getenv("DDB_ENDPOINT"),
            create_table = os.getenv("DDB_CREATE_TABLE") == "1",
            write = "behind",
            batch_writes = batched,
            batch_linger = batched and tonumber(os.getenv("DDB_BATCH_LINGER") or "0.005") or nil,
            writer = os.getenv("DDB_WRITER"),
        },
    }
end

function mcp_config_routes(pools)
    mcp.attach(mcp.CMD_ANY_STORAGE, tier.route{
        cache = pools.cache,
        store = pools.table,
        fill_ttl = tonumber(os.getenv("FILL_TTL") or "300"),
        writes = "cache_first",
        warm = os.getenv("WARM") == "1",
    })
end
