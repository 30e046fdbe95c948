-- Every command with a key goes to a DynamoDB table: memcached's protocol
-- in front of a durable store.
--
-- Settings come from the environment, so one file serves tests and
-- production:
--   DDB_TABLE         table name (default "memroute")
--   DDB_REGION        region (default: the AWS SDK's chain, else us-east-1)
--   DDB_ENDPOINT      endpoint override, e.g. http://127.0.0.1:8000 for
--                     DynamoDB Local (unset for AWS)
--   DDB_WRITE         "through" (default) or "behind"
--   DDB_CREATE_TABLE  "1" creates the table if it is missing (local dev)
--   DDB_BATCH_WRITES  "1" sends write-behind writes in BatchWriteItem
--                     calls (docs/dynamodb.md, "Batched writes")
--   DDB_WRITER        write-behind: "sdk" (default) or "direct" (docs/dynamodb.md,
--                     "The writer's requests")
-- Credentials come from the standard AWS chain (environment, profile, web
-- identity, container, instance metadata).
--
-- Run: DDB_ENDPOINT=http://127.0.0.1:8000 DDB_CREATE_TABLE=1 \
--      memroute --config examples/dynamo-only.lua

function mcp_config_pools()
    return {
        table = mcp.dynamo_pool{
            table = os.getenv("DDB_TABLE") or "memroute",
            region = os.getenv("DDB_REGION"),
            endpoint = os.getenv("DDB_ENDPOINT"),
            write = os.getenv("DDB_WRITE") or "through",
            create_table = os.getenv("DDB_CREATE_TABLE") == "1",
            batch_writes = os.getenv("DDB_BATCH_WRITES") == "1",
            writer = os.getenv("DDB_WRITER"),
        },
    }
end

function mcp_config_routes(pools)
    -- The pool itself is the route: no Lua runs per request.
    mcp.attach(mcp.CMD_ANY_STORAGE, pools.table)
    -- flush_all must not answer OK from the (empty) embedded cache: the
    -- table answers that it does not flush.
    mcp.attach(mcp.CMD_FLUSH_ALL, pools.table)
end
