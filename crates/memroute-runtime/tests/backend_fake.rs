//! `Backend` against scripted fake backends (a loopback `TcpListener` in the
//! test) for the failure corner cases.

use std::cell::Cell;
use std::future::Future;
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use memroute_proto::ResponseCode;
use memroute_runtime::backend::{
    Backend, BackendConfig, BackendError, BackendState, MAX_IN_FLIGHT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{req, run};

/// A scripted backend: every accepted connection is handed to `script`
/// with its index (0 for the first connection).
struct Fake {
    port: u16,
    accepted: Rc<Cell<usize>>,
}

impl Fake {
    async fn start<S, F>(script: S) -> Fake
    where
        S: Fn(usize, Conn) -> F + 'static,
        F: Future<Output = ()> + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Rc::new(Cell::new(0));
        let count = accepted.clone();
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = count.get();
                count.set(index + 1);
                tokio::task::spawn_local(script(index, Conn::new(stream)));
            }
        });
        Fake { port, accepted }
    }

    fn config(&self) -> BackendConfig {
        BackendConfig {
            label: "fake".into(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            retry_wait: Duration::from_secs(10),
            failure_limit: 100,
            ..BackendConfig::new("127.0.0.1", self.port)
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.get()
    }
}

/// The server side of one connection, reading line by line.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// The next request line, without `\r\n`; `None` at EOF.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Answers the `version` check.
    async fn validate(&mut self) -> bool {
        match self.line().await {
            Some(line) if line == "version" => {
                self.send(b"VERSION 1.6.99-fake\r\n").await;
                true
            }
            _ => false,
        }
    }

    /// Reads until EOF without answering.
    async fn swallow(&mut self) {
        while self.line().await.is_some() {}
    }
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends every request in `lines` in one scheduler tick and returns the
/// replies in order.
async fn send_together(
    backend: &Rc<Backend>,
    lines: &[&str],
) -> Vec<Result<memroute_proto::Response, BackendError>> {
    let tasks: Vec<_> = lines
        .iter()
        .map(|line| {
            let backend = backend.clone();
            let request = req(*line);
            tokio::task::spawn_local(async move { backend.send(&request).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// Sends `n` gets at once from separate tasks; returns their results.
async fn send_many(backend: &Rc<Backend>, n: usize) -> Vec<Result<ResponseCode, BackendError>> {
    let lines: Vec<String> = (0..n).map(|i| format!("get k{i}\r\n")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    send_together(backend, &lines)
        .await
        .into_iter()
        .map(|r| r.map(|r| r.code()))
        .collect()
}

#[test]
fn read_timeout_fails_everything_in_flight_and_replaces_the_connection() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await {
                c.swallow().await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            read_timeout: Duration::from_millis(300),
            ..fake.config()
        }));
        let start = Instant::now();
        let results = send_many(&backend, 5).await;
        let took = start.elapsed();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(BackendError::Timeout))),
            "{results:?}"
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // The connection is dropped and a new one opened at once.
        wait_until("a new connection", Duration::from_secs(2), || {
            fake.accepted() == 2
        })
        .await;
        let stats = backend.stats();
        assert_eq!(stats.timeouts, 1, "one timeout event");
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.failed_requests, 5);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.state, BackendState::Healthy);
        assert_eq!(
            BackendError::Timeout.client_reply(),
            "SERVER_ERROR backend failure"
        );
    });
}

#[test]
fn repeated_timeouts_mark_the_backend_bad() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await {
                c.swallow().await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            read_timeout: Duration::from_millis(100),
            failure_limit: 2,
            ..fake.config()
        }));
        for _ in 0..2 {
            let r = backend.send(&req("get a\r\n")).await;
            assert!(matches!(r, Err(BackendError::Timeout)), "{r:?}");
        }
        assert!(backend.is_bad());
        let start = Instant::now();
        let r = backend.send(&req("get a\r\n")).await;
        assert!(matches!(r, Err(BackendError::Down)), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(50));
        assert_eq!(backend.stats().state, BackendState::Bad);
    });
}

#[test]
fn garbage_reply_is_a_bad_response_and_the_connection_is_replaced() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|index, mut c| async move {
            if !c.validate().await {
                return;
            }
            while let Some(line) = c.line().await {
                if index == 0 {
                    c.send(b"BOGUS\r\n").await;
                } else {
                    let key = line.split(' ').nth(1).unwrap_or("").to_string();
                    c.send(format!("VALUE {key} 0 2\r\nok\r\nEND\r\n").as_bytes())
                        .await;
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let results = send_many(&backend, 3).await;
        for r in &results {
            let Err(e @ BackendError::BadResponse(_)) = r else {
                panic!("{results:?}")
            };
            assert_eq!(e.client_reply(), "SERVER_ERROR bad response");
        }
        wait_until("a new connection", Duration::from_secs(2), || {
            fake.accepted() == 2
        })
        .await;
        // The new connection is in sync.
        let r = backend.send(&req("get x\r\n")).await.unwrap();
        assert_eq!(r.raw().as_ref(), b"VALUE x 0 2\r\nok\r\nEND\r\n");
        let stats = backend.stats();
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.consecutive_failures, 0, "reset by the reply");
    });
}

#[test]
fn unsolicited_data_is_a_bad_response() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|index, mut c| async move {
            if !c.validate().await {
                return;
            }
            if index == 0 {
                // A reply nobody asked for, then one extra line per request.
                c.send(b"STORED\r\n").await;
            }
            while c.line().await.is_some() {
                c.send(b"END\r\n").await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        backend.send(&req("get a\r\n")).await.ok();
        // The first connection is dropped (the stray `STORED` is never
        // taken for a reply); the second works.
        wait_until("a new connection", Duration::from_secs(2), || {
            fake.accepted() == 2
        })
        .await;
        let r = backend.send(&req("get a\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::End);
    });
}

#[test]
fn close_mid_reply_fails_in_flight_requests() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|index, mut c| async move {
            if !c.validate().await {
                return;
            }
            if index == 0 {
                c.line().await;
                c.send(b"VALUE k0 0 10\r\nabc").await;
                // Dropping the stream closes it mid-reply.
                return;
            }
            while c.line().await.is_some() {
                c.send(b"END\r\n").await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let results = send_many(&backend, 4).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(BackendError::Closed) | Err(BackendError::Io(_)))),
            "{results:?}"
        );
        let r = backend.send(&req("get k\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::End);
        assert_eq!(fake.accepted(), 2);
        assert_eq!(backend.stats().failures, 1);
    });
}

#[test]
fn wrong_version_reply_fails_validation() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if c.line().await.is_some() {
                c.send(b"ERROR\r\n").await;
                c.swallow().await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            failure_limit: 3,
            ..fake.config()
        }));
        let r = backend.send(&req("get a\r\n")).await;
        let Err(BackendError::Connect(e)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(e.kind(), ErrorKind::InvalidData);
        assert!(e.to_string().contains("ERROR"), "{e}");
        // The failed connection is retried at once; three strikes: bad.
        wait_until("marked bad", Duration::from_secs(2), || backend.is_bad()).await;
        let r = backend.send(&req("get a\r\n")).await;
        assert!(matches!(r, Err(BackendError::Down)), "{r:?}");
        let stats = backend.stats();
        assert_eq!(stats.connects, 0);
        assert_eq!(stats.connect_failures, 3);
        assert_eq!(fake.accepted(), 3);
        assert_eq!(stats.marked_bad, 1);
    });
}

#[test]
fn silent_backend_fails_validation_within_read_timeout() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move { c.swallow().await }).await;
        let backend = Backend::new(Arc::new(BackendConfig {
            read_timeout: Duration::from_millis(200),
            ..fake.config()
        }));
        let start = Instant::now();
        let r = backend.send(&req("get a\r\n")).await;
        let Err(BackendError::Connect(e)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(1));
    });
}

#[test]
fn refused_connections_mark_bad_and_probe_in_the_background() {
    run(Duration::from_secs(10), async {
        // A port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let backend = Backend::new(Arc::new(BackendConfig {
            retry_wait: Duration::from_millis(100),
            failure_limit: 3,
            ..BackendConfig::new("127.0.0.1", port)
        }));
        let r = backend.send(&req("get a\r\n")).await;
        let Err(BackendError::Connect(e)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(
            r.unwrap_err().client_reply(),
            "SERVER_ERROR backend failure"
        );
        wait_until("marked bad", Duration::from_secs(2), || backend.is_bad()).await;
        let start = Instant::now();
        assert!(matches!(
            backend.send(&req("get a\r\n")).await,
            Err(BackendError::Down)
        ));
        assert!(start.elapsed() < Duration::from_millis(50));

        // Idle and bad: probed about every retry_wait, no faster.
        let before = backend.stats().connect_failures;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let probes = backend.stats().connect_failures - before;
        assert!((5..=12).contains(&probes), "{probes} probes in 1 s");
        assert_eq!(backend.stats().state, BackendState::Bad);

        // Something starts listening: the probe brings it back, no traffic
        // needed.
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::task::spawn_local(async move {
                    let mut c = Conn::new(stream);
                    if c.validate().await {
                        while c.line().await.is_some() {
                            c.send(b"END\r\n").await;
                        }
                    }
                });
            }
        });
        wait_until("recovery", Duration::from_secs(2), || !backend.is_bad()).await;
        let r = backend.send(&req("get a\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::End);
    });
}

#[test]
fn flapping_backend_waits_longer_between_retries() {
    run(Duration::from_secs(10), async {
        // Validates, then breaks on the first request: every recovery is
        // followed by a failure right away.
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await {
                c.line().await;
                c.send(b"BOGUS\r\n").await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            failure_limit: 1,
            retry_wait: Duration::from_millis(50),
            flap_time: Duration::from_secs(10),
            flap_backoff_ramp: 2.0,
            flap_backoff_max: Duration::from_millis(400),
            ..fake.config()
        }));
        for round in 0..4 {
            wait_until("recovery", Duration::from_secs(2), || !backend.is_bad()).await;
            let r = backend.send(&req("get a\r\n")).await;
            assert!(matches!(r, Err(BackendError::BadResponse(_))), "{r:?}");
            assert!(backend.is_bad());
            assert_eq!(backend.stats().flaps, round);
        }
        // Flaps 0, 1, 2 gave waits of 50, 100 and 200 ms; with 3 flaps the
        // wait is 50 * 2^3 = 400 ms, which is also the cap.
        let start = Instant::now();
        wait_until("recovery", Duration::from_secs(2), || !backend.is_bad()).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(350), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
    });
}

/// Sends `bytes` a few at a time, so replies arrive split at every point.
async fn trickle(c: &mut Conn, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lines a [`line_answering_fake`] received.
type LineLog = Rc<std::cell::RefCell<Vec<String>>>;

/// A fake that answers each request line with `answer(line, lines before
/// it)`, 3 bytes at a time; the data line of a `set` is read and dropped.
async fn line_answering_fake(
    answer: impl Fn(&str, &[String]) -> &'static [u8] + 'static,
) -> (Fake, LineLog) {
    let answer = Rc::new(answer);
    let seen = LineLog::default();
    let log = seen.clone();
    let fake = Fake::start(move |_, mut c| {
        let (answer, log) = (answer.clone(), log.clone());
        async move {
            if !c.validate().await {
                return;
            }
            while let Some(line) = c.line().await {
                if line.starts_with("set ") {
                    c.line().await;
                }
                let reply = answer(&line, &log.borrow());
                log.borrow_mut().push(line);
                trickle(&mut c, reply).await;
            }
        }
    })
    .await;
    (fake, seen)
}

/// Sends `lines` together (see [`send_together`]) and returns each raw
/// reply; every request must get one.
async fn raw_replies(backend: &Rc<Backend>, lines: &[&str]) -> Vec<Vec<u8>> {
    send_together(backend, lines)
        .await
        .into_iter()
        .map(|r| r.expect("a reply").raw().to_vec())
        .collect()
}

#[test]
fn single_key_gets_sent_together_share_one_line_and_get_their_own_replies() {
    run(Duration::from_secs(10), async {
        let (fake, seen) = line_answering_fake(|line, _| match line {
            // b missed; a asked twice, answered twice
            "get a b a" => b"VALUE a 1 1\r\nx\r\nVALUE a 1 1\r\nx\r\nEND\r\n",
            "gets c" => b"VALUE c 0 2 99\r\nzz\r\nEND\r\n",
            "set x 0 0 1" => b"STORED\r\n",
            "get d e" => b"SERVER_ERROR out of memory\r\n",
            _ => b"ERROR\r\n",
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let lines = [
            "get a\r\n",
            "get b\r\n",
            "get a\r\n",
            "gets c\r\n",
            "set x 0 0 1\r\ny\r\n",
            "get d\r\n",
            "get e\r\n",
        ];
        let replies = send_together(&backend, &lines).await;
        assert_eq!(replies[0].as_ref().unwrap().value(), Some(&b"x"[..]));
        assert!(replies[0].as_ref().unwrap().is_hit());
        assert!(!replies[1].as_ref().unwrap().is_hit());
        let raw: Vec<&[u8]> = replies
            .iter()
            .map(|r| r.as_ref().expect("a reply").raw().as_ref())
            .collect();
        assert_eq!(
            raw,
            [
                &b"VALUE a 1 1\r\nx\r\nEND\r\n"[..],
                b"END\r\n",
                b"VALUE a 1 1\r\nx\r\nEND\r\n",
                b"VALUE c 0 2 99\r\nzz\r\nEND\r\n",
                b"STORED\r\n",
                b"SERVER_ERROR out of memory\r\n",
                b"SERVER_ERROR out of memory\r\n",
            ]
        );
        assert_eq!(
            *seen.borrow(),
            ["get a b a", "gets c", "set x 0 0 1", "get d e"]
        );
        let stats = backend.stats();
        assert_eq!((stats.responses, stats.failures, stats.connects), (7, 0, 1));
        assert_eq!(stats.in_flight, 0);
    });
}

/// Gets join only the line right before them: a set in between keeps a
/// get of its key behind it, and flush_all keeps every get behind it.
#[test]
fn any_other_request_ends_a_joined_line() {
    run(Duration::from_secs(10), async {
        let (fake, seen) = line_answering_fake(|line, before| match line {
            "get a" | "get c" => b"END\r\n",
            "set x 0 0 1" | "set b 0 0 3" => b"STORED\r\n",
            "get b" if before.iter().any(|l| l == "set b 0 0 3") => {
                b"VALUE b 0 3\r\nnew\r\nEND\r\n"
            }
            "get b" => b"VALUE b 0 3\r\nold\r\nEND\r\n",
            "flush_all" => b"OK\r\n",
            _ => b"ERROR\r\n",
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let lines = [
            "get a\r\n",
            "set x 0 0 1\r\ny\r\n",
            "get b\r\n",
            "set b 0 0 3\r\nnew\r\n",
            "get b\r\n",
            "flush_all\r\n",
            "get c\r\n",
        ];
        assert_eq!(
            raw_replies(&backend, &lines).await,
            [
                &b"END\r\n"[..],
                b"STORED\r\n",
                b"VALUE b 0 3\r\nold\r\nEND\r\n",
                b"STORED\r\n",
                b"VALUE b 0 3\r\nnew\r\nEND\r\n",
                b"OK\r\n",
                b"END\r\n",
            ]
        );
        assert_eq!(
            *seen.borrow(),
            [
                "get a",
                "set x 0 0 1",
                "get b",
                "set b 0 0 3",
                "get b",
                "flush_all",
                "get c"
            ],
            "a get never joins a line across another request"
        );
        assert_eq!(backend.stats().failures, 0);
    });
}

#[test]
fn a_joined_reply_for_a_key_not_asked_for_is_a_bad_response() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await && c.line().await.is_some() {
                c.send(b"VALUE zz 0 1\r\nx\r\nEND\r\n").await;
                c.swallow().await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        for r in send_together(&backend, &["get a\r\n", "get b\r\n"]).await {
            assert!(matches!(r, Err(BackendError::BadResponse(_))), "{r:?}");
        }
        assert_eq!(backend.stats().failures, 1);
    });
}

#[test]
fn batchgets_off_sends_one_line_per_get() {
    run(Duration::from_secs(10), async {
        let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        let fake = Fake::start(move |_, mut c| {
            let log = log.clone();
            async move {
                if c.validate().await {
                    while let Some(line) = c.line().await {
                        log.borrow_mut().push(line);
                        c.send(b"END\r\n").await;
                    }
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            batch_gets: false,
            ..fake.config()
        }));
        for r in send_together(&backend, &["get a\r\n", "get b\r\n"]).await {
            assert_eq!(r.unwrap().raw().as_ref(), b"END\r\n");
        }
        assert_eq!(*seen.borrow(), ["get a", "get b"]);
    });
}

#[test]
fn dropped_waiter_does_not_desync_the_stream() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if !c.validate().await {
                return;
            }
            while let Some(line) = c.line().await {
                let key = line.split(' ').nth(1).unwrap_or("").to_string();
                if key == "slow" {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                c.send(format!("VALUE {key} 0 {}\r\n{key}\r\nEND\r\n", key.len()).as_bytes())
                    .await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            backend.send(&req("get slow\r\n")),
        )
        .await;
        assert!(gave_up.is_err(), "should still be waiting");
        let r = backend.send(&req("get fast\r\n")).await.unwrap();
        assert_eq!(r.value(), Some(&b"fast"[..]));
        let stats = backend.stats();
        assert_eq!(stats.responses, 2, "the abandoned reply was read too");
        assert_eq!(stats.failures, 0);
        assert_eq!(fake.accepted(), 1);
    });
}

#[test]
fn over_the_in_flight_limit_requests_wait_their_turn() {
    run(Duration::from_secs(10), async {
        // Answers every get with a miss, but only after a pause, so the
        // queue fills up first; records the order requests arrive in.
        let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        let fake = Fake::start(move |_, mut c| {
            let log = log.clone();
            async move {
                if c.validate().await {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while let Some(line) = c.line().await {
                        log.borrow_mut().push(line);
                        c.send(b"END\r\n").await;
                    }
                }
            }
        })
        .await;
        // One request per line, so the fake sees the order they went out in.
        let backend = Backend::new(Arc::new(BackendConfig {
            batch_gets: false,
            ..fake.config()
        }));
        let total = MAX_IN_FLIGHT + 200;
        let mut tasks = Vec::new();
        for i in 0..total {
            let backend = backend.clone();
            tasks.push(tokio::task::spawn_local(async move {
                backend.send(&req(format!("get k{i}\r\n"))).await
            }));
        }
        wait_until("queue full", Duration::from_secs(2), || {
            backend.stats().in_flight == MAX_IN_FLIGHT
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            backend.stats().in_flight,
            MAX_IN_FLIGHT,
            "never above the limit"
        );
        for task in tasks {
            let reply = task.await.unwrap().expect("waited, then answered");
            assert_eq!(reply.code(), ResponseCode::End);
        }
        let stats = backend.stats();
        assert_eq!((stats.busy, stats.failed_requests), (0, 0));
        assert_eq!(stats.in_flight, 0);
        // Waiters went out in the order they asked.
        let expected: Vec<String> = (0..total).map(|i| format!("get k{i}")).collect();
        assert_eq!(*seen.borrow(), expected);
    });
}

#[test]
fn a_request_that_finds_no_room_within_the_read_timeout_is_busy() {
    run(Duration::from_secs(20), async {
        // A healthy but slow backend: it answers every request 400 ms after
        // it arrived (within the 1 s read timeout), so the queue stays full
        // while waiters pile up behind it, each round taking 400 ms.
        let fake = Fake::start(|_, c| async move {
            let Conn { stream, mut buf } = c;
            let (mut rd, mut wr) = stream.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::task::spawn_local(async move {
                while let Some((arrived, reply)) = rx.recv().await {
                    tokio::time::sleep_until((arrived + Duration::from_millis(400)).into()).await;
                    if wr.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
            loop {
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(end + 1);
                    let reply: &[u8] = if line.starts_with(b"version") {
                        b"VERSION 1.6.99-fake\r\n"
                    } else {
                        b"END\r\n"
                    };
                    let arrived = if line.starts_with(b"version") {
                        Instant::now() - Duration::from_millis(400)
                    } else {
                        Instant::now()
                    };
                    if tx.send((arrived, reply.to_vec())).is_err() {
                        return;
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            read_timeout: Duration::from_secs(1),
            batch_gets: false,
            ..fake.config()
        }));
        // Four rounds of MAX_IN_FLIGHT: the last round waits about 1.2 s for
        // room, past the read timeout.
        let total = 4 * MAX_IN_FLIGHT;
        let mut tasks = Vec::new();
        for i in 0..total {
            let backend = backend.clone();
            tasks.push(tokio::task::spawn_local(async move {
                backend.send(&req(format!("get k{i}\r\n"))).await
            }));
        }
        let (mut answered, mut busy) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(reply) => {
                    assert_eq!(reply.code(), ResponseCode::End);
                    answered += 1;
                }
                Err(BackendError::Busy) => busy += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(answered >= 2 * MAX_IN_FLIGHT, "answered {answered}");
        assert!(busy > 0, "no request was busy");
        let stats = backend.stats();
        assert_eq!(stats.busy, busy as u64);
        assert_eq!(stats.failures, 0, "busy is not a backend failure");
        assert_eq!(stats.timeouts, 0);
    });
}

#[test]
fn a_dripping_backend_times_out_from_the_send_not_the_last_byte() {
    run(Duration::from_secs(10), async {
        // Regression: the read timeout used to restart on every read, so a
        // backend sending a byte every 50 ms held a request for as long as
        // its value took (1,000 bytes: 50 s) and was never marked bad.
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await && c.line().await.is_some() {
                c.send(b"VALUE k 0 1000\r\n").await;
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    c.send(b"x").await;
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            read_timeout: Duration::from_millis(300),
            ..fake.config()
        }));
        let start = Instant::now();
        let r = backend.send(&req("get k\r\n")).await;
        let waited = start.elapsed();
        assert!(matches!(r, Err(BackendError::Timeout)), "{r:?}");
        assert!(
            waited >= Duration::from_millis(250),
            "waited only {waited:?}"
        );
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        let stats = backend.stats();
        assert_eq!((stats.timeouts, stats.failures), (1, 1));
    });
}

#[test]
fn a_reply_for_another_key_drops_the_connection_and_only_its_requests() {
    run(Duration::from_secs(10), async {
        // The first connection is out of step: it answers `get a` with b's
        // value. The next connection is sane.
        let fake = Fake::start(|index, mut c| async move {
            if !c.validate().await {
                return;
            }
            while let Some(line) = c.line().await {
                let key = line.rsplit(' ').next().unwrap_or("").to_string();
                if index == 0 {
                    c.send(b"VALUE b 0 1\r\nB\r\nEND\r\n").await;
                } else {
                    c.send(format!("VALUE {key} 0 1\r\nv\r\nEND\r\n").as_bytes())
                        .await;
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            batch_gets: false,
            ..fake.config()
        }));
        let r = backend.send(&req("get a\r\n")).await;
        assert!(matches!(r, Err(BackendError::BadResponse(_))), "{r:?}");
        let r = backend.send(&req("get a\r\n")).await.unwrap();
        assert_eq!(&r.raw()[..], b"VALUE a 0 1\r\nv\r\nEND\r\n");
        assert_eq!(
            fake.accepted(),
            2,
            "the out-of-step connection was replaced"
        );
        // A multi-key reply must name the keys in the order asked.
        let r = backend.send(&req("get a c\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Value, "VALUE for c is in order");
    });
}

#[test]
fn a_meta_reply_with_another_opaque_drops_the_connection() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await {
                while c.line().await.is_some() {
                    c.send(b"HD O999\r\n").await;
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let r = backend.send(&req("md a O123\r\n")).await;
        assert!(matches!(r, Err(BackendError::BadResponse(_))), "{r:?}");
        // Without an opaque there is nothing to check.
        let r = backend.send(&req("md a\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::Hd);
    });
}

#[test]
fn a_value_over_the_size_limit_is_dropped_unread_and_the_connection_stays() {
    run(Duration::from_secs(10), async {
        // Regression: a reply too big to buffer broke the shared
        // connection and failed every request on it. Now the big value is
        // dropped as it streams in, its request alone gets memcached's
        // error, and the next replies on the same connection are fine.
        let big = vec![b'x'; 5000];
        let fake = Fake::start(move |_, mut c| {
            let big = big.clone();
            async move {
                if !c.validate().await {
                    return;
                }
                while let Some(line) = c.line().await {
                    let mut reply = Vec::new();
                    let words: Vec<&str> = line.split(' ').collect();
                    match words[0] {
                        "get" => {
                            for key in &words[1..] {
                                let value: &[u8] = if key.starts_with("big") { &big } else { b"v" };
                                reply.extend_from_slice(
                                    format!("VALUE {key} 0 {}\r\n", value.len()).as_bytes(),
                                );
                                reply.extend_from_slice(value);
                                reply.extend_from_slice(b"\r\n");
                            }
                            reply.extend_from_slice(b"END\r\n");
                        }
                        _ => reply.extend_from_slice(format!("VA {} \r\n", big.len()).as_bytes()),
                    }
                    if words[0] == "mg" {
                        reply.extend_from_slice(&big);
                        reply.extend_from_slice(b"\r\n");
                    }
                    // In small pieces, so the drop works across reads.
                    for chunk in reply.chunks(700) {
                        c.send(chunk).await;
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            max_value: 1000,
            ..fake.config()
        }));
        const OOM: &[u8] = b"SERVER_ERROR out of memory writing get response\r\n";
        // Alone.
        let r = backend.send(&req("get big1\r\n")).await.unwrap();
        assert_eq!(&r.raw()[..], OOM);
        // Joined with others into one line (batch_gets).
        let replies = send_together(&backend, &["get a\r\n", "get big2\r\n", "get c\r\n"]).await;
        let raws: Vec<Vec<u8>> = replies
            .into_iter()
            .map(|r| r.unwrap().raw().to_vec())
            .collect();
        assert_eq!(raws[0], b"VALUE a 0 1\r\nv\r\nEND\r\n");
        assert_eq!(raws[1], OOM);
        assert_eq!(raws[2], b"VALUE c 0 1\r\nv\r\nEND\r\n");
        // A multi-key line: the values that fit stand, then the error.
        let r = backend.send(&req("get a big3 c big5\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::ServerError);
        let values = b"VALUE a 0 1\r\nv\r\nVALUE c 0 1\r\nv\r\n";
        assert_eq!(&r.raw()[..], &[&values[..], OOM].concat()[..]);
        // A meta VA block.
        let r = backend.send(&req("mg big4 v\r\n")).await.unwrap();
        assert_eq!(&r.raw()[..], OOM);
        // Still in step, on the same connection.
        let r = backend.send(&req("get a\r\n")).await.unwrap();
        assert_eq!(&r.raw()[..], b"VALUE a 0 1\r\nv\r\nEND\r\n");
        assert_eq!(fake.accepted(), 1, "no reconnect");
        let stats = backend.stats();
        assert_eq!((stats.oversize_values, stats.failures), (5, 0));
    });
}

#[test]
fn dropping_the_backend_closes_its_connections() {
    run(Duration::from_secs(10), async {
        let closed = Rc::new(Cell::new(false));
        let seen = closed.clone();
        let fake = Fake::start(move |_, mut c| {
            let seen = seen.clone();
            async move {
                if c.validate().await {
                    while c.line().await.is_some() {
                        c.send(b"EN\r\n").await;
                    }
                    seen.set(true);
                }
            }
        })
        .await;
        let backend = Backend::new(Arc::new(fake.config()));
        let r = backend.send(&req("mg a v\r\n")).await.unwrap();
        assert_eq!(r.code(), ResponseCode::En);
        drop(backend);
        wait_until("the connection to close", Duration::from_secs(2), || {
            closed.get()
        })
        .await;
    });
}

#[test]
fn idle_close_by_the_backend_is_not_a_failure() {
    run(Duration::from_secs(10), async {
        // Each connection answers one request, then closes.
        let fake = Fake::start(|_, mut c| async move {
            if c.validate().await && c.line().await.is_some() {
                c.send(b"END\r\n").await;
            }
        })
        .await;
        let backend = Backend::new(Arc::new(BackendConfig {
            failure_limit: 1,
            ..fake.config()
        }));
        for _ in 0..3 {
            let r = backend.send(&req("get a\r\n")).await.unwrap();
            assert_eq!(r.code(), ResponseCode::End);
            wait_until("idle close", Duration::from_secs(2), || {
                backend.stats().connections_open == 0
            })
            .await;
        }
        // Reopened on demand only, never counted against the backend.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.accepted(), 3);
        let stats = backend.stats();
        assert_eq!(stats.failures, 0);
        assert_eq!(stats.reconnects, 2);
        assert!(!backend.is_bad());
    });
}

#[test]
fn down_backend_is_never_contacted() {
    run(Duration::from_secs(10), async {
        let fake = Fake::start(|_, _| async {}).await;
        let backend = Backend::new(Arc::new(BackendConfig {
            down: true,
            ..fake.config()
        }));
        assert!(backend.is_bad());
        let r = backend.send(&req("get a\r\n")).await;
        assert!(matches!(r, Err(BackendError::Down)), "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fake.accepted(), 0);
        let stats = backend.stats();
        assert_eq!(stats.state, BackendState::Down);
        assert_eq!((stats.requests, stats.fast_fails), (1, 1));
    });
}

#[test]
fn config_defaults_follow_memcached() {
    let c = BackendConfig::default();
    assert_eq!(c.port, 11211);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.read_timeout, Duration::from_secs(3));
    assert_eq!(c.retry_wait, Duration::from_secs(3));
    assert_eq!(c.failure_limit, 3);
    assert_eq!(c.connections, 1);
    assert!(!c.down && !c.tcp_keepalive);
    assert_eq!(c.flap_time, Duration::ZERO);
    assert_eq!(c.flap_backoff_ramp, 1.5);
    assert_eq!(c.flap_backoff_max, Duration::from_secs(3600));
    let named = BackendConfig::new("10.0.0.1", 11212);
    assert_eq!(named.label, "10.0.0.1:11212");
    assert_eq!(named.connection_count(), 1);
    let many = BackendConfig {
        connections: 100,
        ..named
    };
    assert_eq!(many.connection_count(), 8);
}
