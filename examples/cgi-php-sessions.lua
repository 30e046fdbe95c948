-- Perl CGI::Session and PHP sessions in one DynamoDB table, in the AWS SDK
-- for PHP's session table format (see docs/dynamodb.md, "CGI::Session"):
--
--   PHP:  session.save_handler = memcached
--         session.save_path = "127.0.0.1:11211"          ; memroute
--   Perl: CGI::Session->new("driver:memcached", $sid,
--             { Memcached => Cache::Memcached->new({ servers => ["127.0.0.1:11211"] }) })
--
-- php-memcached's keys start with its prefix (memc.sess.key.) and go to the
-- PHP pool: items "PHPSESSID_<sid>". Every other key is a CGI::Session id
-- (or its application lock, lock.<sid>) and goes to the CGI pool: items
-- "CGISESSID_<sid>". CGI::Session stores with no expiry of its own (its
-- expire() lives inside the data), so its items get expires = the write
-- plus CGI_SESSION_LIFETIME, which must be at least the longest expire()
-- the application sets.
--
-- Settings come from the environment:
--   DDB_TABLE             table name (default "sessions")
--   DDB_REGION            region (default: the AWS SDK's chain, else us-east-1)
--   DDB_ENDPOINT          endpoint override (DynamoDB Local)
--   DDB_CREATE_TABLE      "1" creates the table if it is missing (local dev)
--   PHP_SESSION_NAME      PHP's session.name (default "PHPSESSID")
--   PHP_SESS_PREFIX       memcached.sess_prefix (default "memc.sess.key.")
--   CGI_SESSION_NAME      CGI::Session's name (default "CGISESSID")
--   CGI_SESS_PREFIX       Cache::Memcached's namespace (default none)
--   CGI_SESSION_LIFETIME  seconds (default 86400)
--
-- Run: DDB_ENDPOINT=http://127.0.0.1:8000 DDB_CREATE_TABLE=1 \
--      memroute --config examples/cgi-php-sessions.lua

local function php_prefix()
    return os.getenv("PHP_SESS_PREFIX") or "memc.sess.key."
end

function mcp_config_pools()
    local table_name = os.getenv("DDB_TABLE") or "sessions"
    local function sessions(opts)
        opts.table = table_name
        opts.region = os.getenv("DDB_REGION")
        opts.endpoint = os.getenv("DDB_ENDPOINT")
        opts.create_table = os.getenv("DDB_CREATE_TABLE") == "1"
        opts.format = "php_session"
        return mcp.dynamo_pool(opts)
    end
    return {
        php = sessions{
            name = "php_sessions",
            session_name = os.getenv("PHP_SESSION_NAME") or "PHPSESSID",
            session_prefix = php_prefix(),
        },
        cgi = sessions{
            name = "cgi_sessions",
            session_name = os.getenv("CGI_SESSION_NAME") or "CGISESSID",
            session_prefix = os.getenv("CGI_SESS_PREFIX") or "",
            session_lifetime = tonumber(os.getenv("CGI_SESSION_LIFETIME") or "86400"),
        },
    }
end

function mcp_config_routes(pools)
    local php, cgi = pools.php, pools.cgi
    local prefix = php_prefix()
    mcp.attach(mcp.CMD_ANY_STORAGE, function(r)
        if string.sub(r:key(), 1, #prefix) == prefix then
            return php(r)
        end
        return cgi(r)
    end)
end
