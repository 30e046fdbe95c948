<?php
// A PHP request that uses a session through php-memcached's session handler
// (text protocol), so tests can run real PHP sessions through memroute.
//
// Usage: php php_session.php HOST:PORT SID ACTION [HOLD_MS]
//   incr     start the session (locking), add 1 to $_SESSION['n'], hold the
//            lock for HOLD_MS, write and close; prints the new n
//   read     read without locking (read_and_close); prints n (0 if unset)
//   destroy  start the session and destroy it; prints "destroyed"
// PHP_SESS_BINARY=1 in the environment selects the binary protocol
// (php-memcached's default for sessions); else the text protocol.
// Exits 1 with a message when the session cannot be started or written.

if ($argc < 4) {
    fwrite(STDERR, "usage: php_session.php HOST:PORT SID incr|read|destroy [HOLD_MS]\n");
    exit(2);
}
[$server, $sid, $action] = array_slice($argv, 1, 3);
$hold_ms = (int)($argv[4] ?? 0);

ini_set('session.save_handler', 'memcached');
ini_set('session.save_path', $server);
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
ini_set('session.gc_maxlifetime', '1440');
ini_set('memcached.sess_binary_protocol', getenv('PHP_SESS_BINARY') === '1' ? '1' : '0');
ini_set('memcached.sess_locking', '1');
ini_set('memcached.sess_lock_expire', '30');
ini_set('memcached.sess_lock_wait_min', '20');
ini_set('memcached.sess_lock_wait_max', '50');
ini_set('memcached.sess_lock_retries', '400');
ini_set('memcached.sess_consistent_hash', '0');

session_id($sid);
$options = $action === 'read' ? ['read_and_close' => true] : [];
if (!@session_start($options)) {
    fwrite(STDERR, "session_start failed: " . (error_get_last()['message'] ?? '?') . "\n");
    exit(1);
}
switch ($action) {
    case 'incr':
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
        usleep($hold_ms * 1000);
        if (!session_write_close()) {
            fwrite(STDERR, "session_write_close failed\n");
            exit(1);
        }
        echo $_SESSION['n'], "\n";
        break;
    case 'read':
        echo $_SESSION['n'] ?? 0, "\n";
        break;
    case 'destroy':
        if (!session_destroy()) {
            fwrite(STDERR, "session_destroy failed\n");
            exit(1);
        }
        echo "destroyed\n";
        break;
    default:
        fwrite(STDERR, "unknown action $action\n");
        exit(2);
}
