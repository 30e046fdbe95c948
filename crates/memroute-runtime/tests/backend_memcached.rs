//! `Backend` against a real memcached (Debian's /usr/bin/memcached, started
//! per test on a free loopback port).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memroute_proto::ResponseCode;
use memroute_runtime::backend::{Backend, BackendConfig, BackendError, BackendState};

const MEMCACHED: &str = "/usr/bin/memcached";

/// A memcached child process, killed on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    /// Starts memcached on a free port. Tests in this binary run in
    /// parallel and a port returned by `free_port` may be taken by another
    /// test's memcached before ours binds it; ours then exits and a plain
    /// connect would reach the other test's server (which later goes away
    /// under us). So readiness means "our child answers with its own pid",
    /// and a lost race is retried on a new port.
    fn start() -> Memcached {
        for _ in 0..5 {
            if let Some(server) = Memcached::try_start_on(free_port()) {
                return server;
            }
        }
        panic!("memcached lost the race for a free port five times");
    }

    /// Starts memcached on `port` (a restart on the port a test killed).
    fn start_on(port: u16) -> Memcached {
        Memcached::try_start_on(port)
            .unwrap_or_else(|| panic!("memcached could not listen on {port}"))
    }

    /// None when the child exited (port taken) before answering.
    fn try_start_on(port: u16) -> Option<Memcached> {
        assert!(
            std::path::Path::new(MEMCACHED).exists(),
            "{MEMCACHED} is missing: run scripts/install-test-deps.sh"
        );
        let child = Command::new(MEMCACHED)
            .args(["-u", "root", "-U", "0", "-l", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {MEMCACHED} ({e}): run scripts/install-test-deps.sh")
            });
        let mut server = Memcached { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if server.child.try_wait().unwrap().is_some() {
                return None;
            }
            if server_pid(port) == Some(server.child.id()) {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "memcached did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn config(&self) -> BackendConfig {
        BackendConfig {
            label: "mc".into(),
            ..BackendConfig::new("127.0.0.1", self.port)
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pid that the memcached listening on `port` reports in `stats`.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    conn.write_all(b"stats\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.ends_with(b"END\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .find_map(|line| line.strip_prefix("STAT pid "))
        .and_then(|pid| pid.trim().parse().ok())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

mod common;
use common::{req, run};

/// Reads one `STAT` value through the backend.
async fn stat(backend: &Backend, name: &str) -> u64 {
    let reply = backend.send(&req("stats\r\n")).await.unwrap();
    assert_eq!(reply.code(), ResponseCode::Stat);
    let text = String::from_utf8_lossy(reply.raw()).into_owned();
    text.lines()
        .find_map(|line| {
            let mut parts = line.split(' ');
            (parts.next() == Some("STAT") && parts.next() == Some(name))
                .then(|| parts.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no stat {name}"))
}

#[test]
fn commands_round_trip() {
    let mc = Memcached::start();
    run(Duration::from_secs(10), async {
        let backend = Backend::new(Arc::new(mc.config()));
        let r = backend
            .send(&req("set k 5 0 5\r\nhello\r\n"))
            .await
            .unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        assert_eq!(r.raw().as_ref(), b"STORED\r\n");

        let r = backend.send(&req("get k\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Value);
        assert_eq!(r.value(), Some(&b"hello"[..]));
        assert_eq!(r.raw().as_ref(), b"VALUE k 5 5\r\nhello\r\nEND\r\n");

        let r = backend.send(&req("get missing\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::End);

        let r = backend.send(&req("mg k v f\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Va);
        assert_eq!(r.value(), Some(&b"hello"[..]));
        assert_eq!(r.line(), b"VA 5 f5");

        let r = backend.send(&req("ms m 3 T0\r\nabc\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Hd);
        let r = backend.send(&req("mg m v\r\n")).await.unwrap();
        assert_eq!(r.value(), Some(&b"abc"[..]));
        let r = backend.send(&req("mg nope v\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::En);

        let r = backend.send(&req("set n 0 0 2\r\n41\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        let r = backend.send(&req("incr n 1\r\n")).await.unwrap();
        assert_eq!((r.code(), r.line()), (ResponseCode::Number, &b"42"[..]));

        let r = backend.send(&req("delete k\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Deleted);
        let r = backend.send(&req("delete k\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::NotFound);

        let r = backend.send(&req("version\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Version);
        let r = backend.send(&req("mn\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Mn);
        // An error reply is a reply: the connection stays in sync.
        let r = backend.send(&req("incr k 1\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::NotFound);
        let r = backend.send(&req("set n 0 0 1\r\nx\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        let r = backend.send(&req("incr n 1\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::ClientError);

        assert!(stat(&backend, "curr_connections").await >= 1);

        let stats = backend.stats();
        assert_eq!(stats.state, BackendState::Healthy);
        assert_eq!(stats.requests, 17);
        assert_eq!(stats.responses, 17);
        assert_eq!(stats.failed_requests, 0);
        assert_eq!(stats.connects, 1);
        assert_eq!(stats.connections_open, 1);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.latency.count, 17);
        assert!(stats.latency.p50().unwrap() <= Duration::from_secs(1));
        assert!(stats.latency.mean().is_some());
        assert!(!backend.is_bad());
    });
}

#[test]
fn concurrent_sends_get_their_own_replies() {
    let mc = Memcached::start();
    run(Duration::from_secs(20), async {
        let backend = Backend::new(Arc::new(BackendConfig {
            connections: 3,
            ..mc.config()
        }));
        const N: usize = 600;
        // Sets, then gets and meta gets, all in flight at once, from
        // separate tasks; each checks its own reply.
        let mut tasks = Vec::new();
        for i in 0..N {
            let backend = backend.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let value = format!("value-{i}-{}", "x".repeat(i % 50));
                let set = format!("set key:{i} {i} 0 {}\r\n{value}\r\n", value.len());
                let r = backend.send(&req(set)).await.unwrap();
                assert_eq!(r.code(), ResponseCode::Stored);
            }));
        }
        for t in tasks.drain(..) {
            t.await.unwrap();
        }
        for i in 0..N {
            let backend = backend.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let value = format!("value-{i}-{}", "x".repeat(i % 50));
                let r = backend
                    .send(&req(format!("get key:{i}\r\n")))
                    .await
                    .unwrap();
                assert_eq!(r.value(), Some(value.as_bytes()), "get key:{i}");
                assert_eq!(
                    r.line(),
                    format!("VALUE key:{i} {i} {}", value.len()).as_bytes()
                );
                let r = backend
                    .send(&req(format!("mg key:{i} v k\r\n")))
                    .await
                    .unwrap();
                assert_eq!(r.value(), Some(value.as_bytes()), "mg key:{i}");
                assert_eq!(r.line(), format!("VA {} kkey:{i}", value.len()).as_bytes());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A multi-key get across the same connections.
        let r = backend
            .send(&req("get key:1 key:2 nokey key:3\r\n"))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(r.raw()).into_owned();
        assert_eq!(text.matches("VALUE ").count(), 3);

        let stats = backend.stats();
        assert_eq!(stats.responses, 3 * N as u64 + 1);
        assert_eq!(stats.failed_requests, 0);
        assert_eq!(stats.connects, 3, "three pipelined connections");
        assert_eq!(stats.connections_open, 3);
    });
}

#[test]
fn big_value() {
    let mc = Memcached::start();
    run(Duration::from_secs(20), async {
        let backend = Backend::new(Arc::new(mc.config()));
        let value: Vec<u8> = (0..500 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut set = format!("set big 0 0 {}\r\n", value.len()).into_bytes();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        let r = backend.send(&req(&set)).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        // Several big replies pipelined, with small ones around them.
        let mut tasks = Vec::new();
        for i in 0..6 {
            let backend = backend.clone();
            let value = value.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let wire = if i % 2 == 0 {
                    "get big\r\n"
                } else {
                    "mg big v\r\n"
                };
                let r = backend.send(&req(wire)).await.unwrap();
                assert_eq!(r.value(), Some(&value[..]));
                let r = backend.send(&req("get small\r\n")).await.unwrap();
                assert_eq!(r.code(), ResponseCode::End);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = backend.stats();
        assert_eq!(stats.failed_requests, 0);
        assert!(stats.bytes_read > 6 * 500 * 1024);
        assert!(stats.bytes_written > 500 * 1024);
    });
}

#[test]
fn big_pipelined_writes_and_replies_do_not_deadlock() {
    // Megabytes of requests and of replies in flight at once: if the
    // client stopped reading while a write is blocked, memcached (blocked
    // writing replies nobody reads) would stop reading too.
    let mc = Memcached::start();
    run(Duration::from_secs(30), async {
        let backend = Backend::new(Arc::new(mc.config()));
        let value = vec![b'v'; 500 * 1024];
        let mut set = format!("set big 0 0 {}\r\n", value.len()).into_bytes();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        let set = req(&set);
        assert_eq!(
            backend.send(&set).await.unwrap().code(),
            ResponseCode::Stored
        );
        let mut tasks = Vec::new();
        for i in 0..60 {
            let backend = backend.clone();
            let set = set.clone();
            let len = value.len();
            tasks.push(tokio::task::spawn_local(async move {
                if i % 2 == 0 {
                    let r = backend.send(&set).await.unwrap();
                    assert_eq!(r.code(), ResponseCode::Stored);
                } else {
                    let r = backend.send(&req("get big\r\n")).await.unwrap();
                    assert_eq!(r.value().map(<[u8]>::len), Some(len));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = backend.stats();
        assert_eq!(stats.failed_requests, 0);
        assert!(stats.bytes_written > 30 * 500 * 1024);
        assert!(stats.bytes_read > 30 * 500 * 1024);
    });
}

#[test]
fn ten_thousand_pipelined_gets_are_batched() {
    let mc = Memcached::start();
    run(Duration::from_secs(60), async {
        let backend = Backend::new(Arc::new(mc.config()));
        for k in 0..100 {
            let r = backend
                .send(&req(format!(
                    "set p{k} 0 0 {}\r\n{k}\r\n",
                    k.to_string().len()
                )))
                .await
                .unwrap();
            assert_eq!(r.code(), ResponseCode::Stored);
        }
        let connections_before = stat(&backend, "total_connections").await;
        let gets_before = stat(&backend, "cmd_get").await;
        let writes_before = backend.stats().writes;

        // 10 waves of 1000 concurrent gets (MAX_IN_FLIGHT is 1024 per
        // connection); every wave is issued in one scheduler tick.
        const WAVES: usize = 10;
        const WAVE: usize = 1000;
        for wave in 0..WAVES {
            let mut tasks = Vec::with_capacity(WAVE);
            for i in 0..WAVE {
                let k = (wave * WAVE + i) % 100;
                let backend = backend.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let r = backend.send(&req(format!("get p{k}\r\n"))).await.unwrap();
                    assert_eq!(r.value(), Some(k.to_string().as_bytes()));
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        let writes = backend.stats().writes - writes_before;
        // One write per wave, give or take a task scheduled late.
        assert!(
            writes <= 3 * WAVES as u64,
            "{writes} writes for {} gets: not batched",
            WAVES * WAVE
        );
        assert_eq!(
            stat(&backend, "cmd_get").await - gets_before,
            (WAVES * WAVE) as u64
        );
        assert_eq!(
            stat(&backend, "total_connections").await,
            connections_before,
            "no new connection"
        );
        let stats = backend.stats();
        assert_eq!(stats.failed_requests, 0);
        assert_eq!(stats.connects, 1);
    });
}

#[test]
fn joined_gets_never_overtake_a_set_of_their_key() {
    let mc = Memcached::start();
    run(Duration::from_secs(60), async {
        let backend = Backend::new(Arc::new(mc.config()));
        // Each round, in one scheduler tick: a get of another key (which
        // opens a joinable line), a set of k{i}, and a get of k{i} that must
        // see that set, for 200 keys.
        for round in 0..5 {
            let mut tasks = Vec::new();
            for i in 0..200 {
                let value = format!("r{round}-{i}");
                let lines = [
                    format!("get other{i}\r\n"),
                    format!("set k{i} 0 0 {}\r\n{value}\r\n", value.len()),
                    format!("get k{i}\r\n"),
                ];
                for (n, line) in lines.into_iter().enumerate() {
                    let backend = backend.clone();
                    let value = value.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        let r = backend.send(&req(line)).await.unwrap();
                        match n {
                            0 => assert_eq!(r.code(), ResponseCode::End),
                            1 => assert_eq!(r.code(), ResponseCode::Stored),
                            _ => assert_eq!(r.value(), Some(value.as_bytes()), "stale read"),
                        }
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        assert_eq!(backend.stats().failed_requests, 0);
    });
}

#[test]
fn one_tick_of_sends_is_one_write() {
    let mc = Memcached::start();
    run(Duration::from_secs(10), async {
        let backend = Backend::new(Arc::new(mc.config()));
        backend.send(&req("mn\r\n")).await.unwrap(); // connected
        let before = backend.stats().writes;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let backend = backend.clone();
                tokio::task::spawn_local(async move {
                    backend.send(&req(format!("mg t{i} v\r\n"))).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().code(), ResponseCode::En);
        }
        assert_eq!(backend.stats().writes - before, 1);
    });
}

#[test]
fn killed_backend_fails_fast_goes_bad_and_recovers_by_itself() {
    let mut mc = Memcached::start();
    let port = mc.port;
    run(Duration::from_secs(30), async move {
        let config = BackendConfig {
            retry_wait: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            read_timeout: Duration::from_secs(1),
            failure_limit: 3,
            connections: 2,
            ..mc.config()
        };
        let backend = Backend::new(Arc::new(config));
        assert_eq!(
            backend
                .send(&req("set k 0 0 1\r\nv\r\n"))
                .await
                .unwrap()
                .code(),
            ResponseCode::Stored
        );

        // Load: a few tasks sending in a loop, each send bounded.
        let stop = Rc::new(std::cell::Cell::new(false));
        let outcomes = Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut load = Vec::new();
        for t in 0..4 {
            let (backend, stop, outcomes) = (backend.clone(), stop.clone(), outcomes.clone());
            load.push(tokio::task::spawn_local(async move {
                let mut i = 0;
                while !stop.get() {
                    i += 1;
                    let request = req(format!("get k{t}-{i}\r\n"));
                    let started = Instant::now();
                    let result =
                        tokio::time::timeout(Duration::from_secs(3), backend.send(&request)).await;
                    let Ok(result) = result else {
                        panic!("send hung for 3 s");
                    };
                    outcomes
                        .borrow_mut()
                        .push((result.map(|r| r.code()), started.elapsed()));
                    tokio::task::yield_now().await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ok_before_kill = outcomes.borrow().iter().filter(|(r, _)| r.is_ok()).count();
        assert!(ok_before_kill > 0);

        mc.kill();
        let killed_at = Instant::now();
        while !backend.is_bad() {
            assert!(
                killed_at.elapsed() < Duration::from_secs(3),
                "not marked bad: {:?}",
                backend.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Keep loading a little while it is bad: fast fails.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.set(true);
        for t in load {
            t.await.unwrap();
        }
        let outcomes = outcomes.take();
        let errors: Vec<_> = outcomes.iter().filter(|(r, _)| r.is_err()).collect();
        assert!(!errors.is_empty());
        for (result, took) in &errors {
            let error = result.as_ref().unwrap_err();
            assert!(
                matches!(
                    error,
                    BackendError::Down
                        | BackendError::Closed
                        | BackendError::Io(_)
                        | BackendError::Connect(_)
                ),
                "unexpected error {error:?}"
            );
            assert_eq!(error.client_reply(), "SERVER_ERROR backend failure");
            assert!(*took < Duration::from_secs(1), "error took {took:?}");
        }
        let fast: Vec<_> = errors
            .iter()
            .filter(|(r, _)| matches!(r, Err(BackendError::Down)))
            .collect();
        assert!(!fast.is_empty(), "no fast fail while bad");
        assert!(fast
            .iter()
            .all(|(_, took)| *took < Duration::from_millis(50)));
        let stats = backend.stats();
        assert_eq!(stats.state, BackendState::Bad);
        assert!(stats.marked_bad >= 1);
        assert!(stats.fast_fails >= 1);
        assert_eq!(stats.in_flight, 0);

        // Restart on the same port; the backend recovers with no traffic.
        let _restarted = Memcached::start_on(port);
        let restarted_at = Instant::now();
        while backend.is_bad() {
            assert!(
                restarted_at.elapsed() < Duration::from_secs(5),
                "did not recover by itself: {:?}",
                backend.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = backend.send(&req("set k 0 0 1\r\nw\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Stored);
        let r = backend.send(&req("get k\r\n")).await.unwrap();
        assert_eq!(r.value(), Some(&b"w"[..]));
        let stats = backend.stats();
        assert_eq!(stats.state, BackendState::Healthy);
        assert_eq!(stats.consecutive_failures, 0);
        assert!(stats.reconnects >= 1);
    });
}
