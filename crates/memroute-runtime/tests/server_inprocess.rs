//! In-process end-to-end tests: a real server on port 0 in this process,
//! real TCP clients, exact bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memroute_runtime::lua::ProxyConfig;
use memroute_runtime::{ReloadHandle, RuntimeError, Server, ServerConfig, ShutdownHandle};

struct Running {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    reload: ReloadHandle,
    thread: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl Running {
    fn start(mut config: ServerConfig) -> Running {
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.threads = 2;
        let server = Server::bind(config).expect("bind");
        let addr = server.local_addrs()[0];
        let shutdown = server.shutdown_handle();
        let reload = server.reload_handle();
        let thread = std::thread::spawn(move || server.run(false));
        // Wait until it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = TcpStream::connect(addr) {
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                if c.write_all(b"version\r\n").is_ok() {
                    let mut buf = [0u8; 64];
                    if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Running {
            addr,
            shutdown,
            reload,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Duration {
        let start = Instant::now();
        self.shutdown.shutdown();
        let result = self.thread.take().unwrap().join().expect("server thread");
        result.expect("server run");
        start.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.shutdown();
            let _ = thread.join();
        }
    }
}

fn client(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Sends `send` and reads until exactly `expect.len()` bytes arrived.
fn converse(c: &mut TcpStream, send: &[u8], expect: &[u8]) {
    c.write_all(send).unwrap();
    let mut got = vec![0u8; expect.len()];
    c.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading reply to {:?}: {e}", String::from_utf8_lossy(send)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expect),
        "reply to {:?}",
        String::from_utf8_lossy(send)
    );
}

#[test]
fn embedded_pipeline_answers_in_order() {
    let server = Running::start(ServerConfig::default());
    let mut c = client(server.addr);
    converse(
        &mut c,
        b"set a 0 0 1\r\n1\r\nset b 5 0 2\r\n22\r\nget a b c\r\nincr a 41\r\ndelete b\r\nmn\r\n",
        b"STORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 5 2\r\n22\r\nEND\r\n42\r\nDELETED\r\nMN\r\n",
    );
    // quit closes after earlier replies.
    c.write_all(b"get a\r\nquit\r\nget a\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"VALUE a 0 2\r\n42\r\nEND\r\n");
    server.stop();
}

#[test]
fn connection_limit_refuses_with_memcacheds_words() {
    let server = Running::start(ServerConfig {
        max_connections: 2,
        ..Default::default()
    });
    // The start-up probe's connection is released asynchronously, so retry
    // until both slots are ours.
    let a = admitted(server.addr);
    let _b = admitted(server.addr);
    let mut refused = client(server.addr);
    let mut all = Vec::new();
    refused.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"ERROR Too many open connections\r\n");
    drop(a);
    // The freed slot is usable again.
    let _c = admitted(server.addr);
    server.stop();
}

/// A connection the server accepted (it answers `mn`), retried for a while.
fn admitted(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = client(addr);
        c.write_all(b"mn\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap_or(0);
        if &buf[..n] == b"MN\r\n" {
            return c;
        }
        assert_eq!(&buf[..n], b"ERROR Too many open connections\r\n");
        assert!(Instant::now() < deadline, "no connection slot freed up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_finishes_requests_and_does_not_wait_for_stalled_clients() {
    let server = Running::start(ServerConfig::default());
    let mut idle = client(server.addr);
    converse(&mut idle, b"mn\r\n", b"MN\r\n");
    let mut stalled = client(server.addr);
    stalled.write_all(b"set half 0 0 10\r\n01234").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let took = server.stop();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
}

fn write_startfile(dir: &std::path::Path, reply: &str) -> PathBuf {
    let path = dir.join("routes.lua");
    std::fs::write(
        &path,
        format!(
            "function mcp_config_pools() return {{}} end\n\
             function mcp_config_routes(p)\n\
               mcp.attach(mcp.CMD_GET, function(r) return \"SERVER_ERROR {reply} \" .. r:key() end)\n\
             end\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn routes_and_reload_all_or_nothing() {
    let dir = std::env::temp_dir().join(format!("memroute-inproc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let startfile = write_startfile(&dir, "v1");
    let server = Running::start(ServerConfig {
        proxy: Some(ProxyConfig {
            startfile: startfile.clone(),
            start_arg: None,
            split_start_arg: false,
            lua_path: vec![],
            libraries: &[],
        }),
        ..Default::default()
    });
    let mut c = client(server.addr);
    converse(&mut c, b"get k\r\n", b"SERVER_ERROR v1 k\r\n");
    // Commands without a route still reach the embedded cache.
    converse(&mut c, b"set k 0 0 1\r\nx\r\n", b"STORED\r\n");
    // Multi-key gets run the route per key; an error per key reads as a miss.
    converse(&mut c, b"get k j\r\n", b"END\r\n");

    write_startfile(&dir, "v2");
    server.reload.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = client(server.addr);
        c.write_all(b"get k\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        if &buf[..n] == b"SERVER_ERROR v2 k\r\n" {
            break;
        }
        assert_eq!(&buf[..n], b"SERVER_ERROR v1 k\r\n");
        assert!(Instant::now() < deadline, "reload never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A broken startfile keeps the running configuration everywhere.
    std::fs::write(&startfile, "function mcp_config_pools( oops\n").unwrap();
    server.reload.reload();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = client(server.addr);
    converse(&mut c, b"get k\r\n", b"SERVER_ERROR v2 k\r\n");
    c.write_all(b"stats proxy\r\n").unwrap();
    let mut stats = String::new();
    let mut buf = [0u8; 4096];
    while !stats.ends_with("END\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        stats.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(stats.contains("STAT config_reloads 1\r\n"), "{stats}");
    assert!(stats.contains("STAT config_reload_fails 1\r\n"), "{stats}");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_startfile_fails_at_start_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("memroute-inproc-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.lua");
    std::fs::write(
        &path,
        "function mcp_config_pools()\n  return mcp.pool({}, {})\nend\nfunction mcp_config_routes(p) end\n",
    )
    .unwrap();
    let server = Server::bind(ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        threads: 1,
        proxy: Some(ProxyConfig {
            startfile: path.clone(),
            start_arg: None,
            split_start_arg: false,
            lua_path: vec![],
            libraries: &[],
        }),
        ..Default::default()
    })
    .unwrap();
    let err = server
        .run(false)
        .expect_err("a broken startfile must not start");
    let text = err.to_string();
    assert!(text.contains("bad.lua:2"), "{text}");
    assert!(text.contains("at least one backend"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
