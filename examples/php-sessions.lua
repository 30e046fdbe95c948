-- PHP sessions in DynamoDB, in the AWS SDK for PHP's table format, for
-- PHP applications that keep php-memcached's session handler:
--
--   session.save_handler = memcached
--   session.save_path = "127.0.0.1:11211"       ; memroute
--
-- (binary protocol, php-memcached's default for sessions, or text).
--
-- Each session is one item: id "<session name>_<sid>", data, expires and,
-- while a request holds it, lock (see docs/dynamodb.md). Applications that
-- use Aws\DynamoDb\SessionHandler on the same table share the sessions.
--
-- Settings come from the environment:
--   DDB_TABLE          table name (default "sessions")
--   DDB_REGION         region (default: the AWS SDK's chain, else us-east-1)
--   DDB_ENDPOINT       endpoint override (DynamoDB Local)
--   DDB_CREATE_TABLE   "1" creates the table if it is missing (local dev)
--   PHP_SESSION_NAME   PHP's session.name (default "PHPSESSID")
--   PHP_SESS_PREFIX    memcached.sess_prefix (default "memc.sess.key.")
--
-- Run: DDB_ENDPOINT=http://127.0.0.1:8000 DDB_CREATE_TABLE=1 \
--      memroute --config examples/php-sessions.lua

function mcp_config_pools()
    return {
        sessions = mcp.dynamo_pool{
            table = os.getenv("DDB_TABLE") or "sessions",
            region = os.getenv("DDB_REGION"),
            endpoint = os.getenv("DDB_ENDPOINT"),
            create_table = os.getenv("DDB_CREATE_TABLE") == "1",
            format = "php_session",
            session_name = os.getenv("PHP_SESSION_NAME") or "PHPSESSID",
            session_prefix = os.getenv("PHP_SESS_PREFIX") or "memc.sess.key.",
        },
    }
end

function mcp_config_routes(pools)
    local sessions = pools.sessions
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r) return sessions(r) end)
end
