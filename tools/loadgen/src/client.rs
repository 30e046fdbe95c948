//! One connection's load: a writer that sends requests (closed loop, up to
//! `depth` in flight, or on the open-loop timetable) and a reader that
//! parses each reply strictly, both in the connection's task.
//!
//! A reply that cannot be parsed, a read that times out or a closed
//! connection loses the requests in flight (each counted as an error of
//! that kind); the connection is then opened again and the load goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::proto::{parse_reply, KeySpace, Mix, Op, OpKind, Outcome, Rng};
use crate::schedule::Schedule;
use crate::stats::Stats;

/// What every connection shares.
#[derive(Debug)]
pub struct Config {
    pub addr: String,
    pub ks: KeySpace,
    pub mix: Mix,
    pub connections: u64,
    /// Per-read (and connect) timeout.
    pub timeout: Duration,
    pub verify: bool,
    /// Open loop: spin to each exact due time instead of sending up to
    /// 1 ms early (tokio's timer only wakes on whole milliseconds).
    pub spin: bool,
}

/// One phase of the run for one connection.
#[derive(Clone, Debug)]
pub enum Work {
    /// Set every key this connection owns (keys c, c + C, ...), closed loop.
    Prefill,
    /// The measured load.
    Measure {
        /// Open loop: requests per second over all connections.
        rate: Option<f64>,
        /// This connection's share of `--ops`.
        ops: Option<u64>,
        seed: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub work: Work,
    pub depth: usize,
    pub start: Instant,
    pub deadline: Option<Instant>,
    /// A miss is an error (every key was set first).
    pub expect_hits: bool,
}

static WARNINGS: AtomicU64 = AtomicU64::new(0);

fn warn(msg: &str) {
    let n = WARNINGS.fetch_add(1, Ordering::Relaxed);
    if n < 10 {
        eprintln!("memroute-loadgen: {msg}");
    } else if n == 10 {
        eprintln!("memroute-loadgen: (more connection errors not shown)");
    }
}

pub async fn connect(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

struct Source {
    prefill_next: Option<u64>,
    stride: u64,
    remaining: Option<u64>,
    rng: Rng,
}

impl Source {
    fn next(&mut self, cfg: &Config) -> Option<Op> {
        if let Some(next) = self.prefill_next.as_mut() {
            if *next >= u64::from(cfg.ks.keys()) {
                return None;
            }
            let k = *next as u32;
            *next += self.stride;
            return Some(Op::Set(k));
        }
        if let Some(r) = self.remaining.as_mut() {
            if *r == 0 {
                return None;
            }
            *r -= 1;
        }
        Some(cfg.mix.next(&mut self.rng))
    }
}

struct Pending {
    op: Op,
    t0: Instant,
}

enum Failure {
    Timeout,
    Closed,
    Io(std::io::Error),
    Protocol(String),
}

/// Replies counted but not yet added to the shared stats.
struct Recorder {
    shared: Arc<Mutex<Stats>>,
    local: Vec<(OpKind, Outcome, u64)>,
    expect_hits: bool,
}

impl Recorder {
    fn push(&mut self, kind: OpKind, o: Outcome, ns: u64) {
        self.local.push((kind, o, ns));
        if self.local.len() >= 512 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut s = self.shared.lock().expect("stats lock");
        for (kind, o, ns) in self.local.drain(..) {
            s.record(kind, &o, ns, self.expect_hits);
        }
    }
}

/// Runs one phase on connection `conn`; returns the connection for the
/// next phase (None if it could not be kept open).
pub async fn run(
    cfg: Arc<Config>,
    conn: u64,
    mut stream: Option<TcpStream>,
    phase: Phase,
    shared: Arc<Mutex<Stats>>,
) -> Option<TcpStream> {
    let mut source = match &phase.work {
        Work::Prefill => Source {
            prefill_next: Some(conn),
            stride: cfg.connections,
            remaining: None,
            rng: Rng::new(0),
        },
        Work::Measure { ops, seed, .. } => Source {
            prefill_next: None,
            stride: 0,
            remaining: *ops,
            rng: Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (conn + 1)),
        },
    };
    let schedule = match phase.work {
        Work::Measure {
            rate: Some(rate), ..
        } => Some(Schedule::new(rate, cfg.connections, conn)),
        _ => None,
    };
    let mut rec = Recorder {
        shared: shared.clone(),
        local: Vec::with_capacity(512),
        expect_hits: phase.expect_hits,
    };
    let mut k = 0u64; // requests taken from the source (the timetable index)
    let mut sent_total = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut failures_in_a_row = 0u32;
    let mut errors = crate::stats::Errors::default();
    let mut finished = false;
    let mut exhausted = false;
    while !finished {
        if phase.deadline.is_some_and(|d| Instant::now() >= d) || exhausted {
            break;
        }
        let s = match stream.take() {
            Some(s) => s,
            None => match connect(&cfg.addr, cfg.timeout).await {
                Ok(s) => s,
                Err(e) => {
                    errors.connection += 1;
                    failures_in_a_row += 1;
                    warn(&format!("connection {conn}: connect to {}: {e}", cfg.addr));
                    // Without a deadline (--ops), give up after ~5 s of refusals.
                    if phase.deadline.is_none() && failures_in_a_row >= 50 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sent = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let result = session(
            &cfg,
            s,
            &phase,
            schedule.as_ref(),
            &mut source,
            &mut k,
            &mut max_lag,
            &mut exhausted,
            &sent,
            &done,
            &mut rec,
        )
        .await;
        sent_total += sent.load(Ordering::Relaxed);
        match result {
            Ok(s) => {
                stream = Some(s);
                finished = true;
            }
            Err(f) => {
                let lost = sent.load(Ordering::Relaxed) - done.load(Ordering::Relaxed);
                let what = match &f {
                    Failure::Timeout => {
                        errors.timeout += lost.max(1);
                        format!("no reply within {:?}", cfg.timeout)
                    }
                    Failure::Closed => {
                        errors.connection += lost.max(1);
                        "connection closed by the server".to_string()
                    }
                    Failure::Io(e) => {
                        errors.connection += lost.max(1);
                        format!("I/O error: {e}")
                    }
                    Failure::Protocol(m) => {
                        errors.protocol += lost.max(1);
                        format!("bad reply: {m}")
                    }
                };
                warn(&format!(
                    "connection {conn}: {what}; {lost} request(s) in flight lost, reconnecting"
                ));
                failures_in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    rec.flush();
    let mut s = shared.lock().expect("stats lock");
    s.errors.add(&errors);
    s.sent += sent_total;
    s.max_send_lag_ns = s.max_send_lag_ns.max(max_lag.as_nanos() as u64);
    stream
}

/// Waits for a request's due time. tokio's timer wakes on millisecond
/// ticks, up to about 1 ms after the time asked, and that delay would count
/// as latency. So it sleeps until 1 ms before `due`, and the request may
/// leave up to 1 ms early (its latency is then taken from when it left).
/// With `spin`, it sleeps until 1.5 ms before and yields in a loop until
/// `due` exactly, which costs CPU.
async fn wait_until(due: Instant, spin: bool) {
    if !spin {
        if let Some(early) = due.checked_sub(Duration::from_millis(1)) {
            tokio::time::sleep_until(early.into()).await;
        }
        return;
    }
    if let Some(early) = due.checked_sub(Duration::from_micros(1500)) {
        if early > Instant::now() {
            tokio::time::sleep_until(early.into()).await;
        }
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &Config,
    stream: TcpStream,
    phase: &Phase,
    schedule: Option<&Schedule>,
    source: &mut Source,
    k: &mut u64,
    max_lag: &mut Duration,
    exhausted: &mut bool,
    sent: &AtomicU64,
    done: &AtomicU64,
    rec: &mut Recorder,
) -> Result<TcpStream, Failure> {
    let (mut rd, mut wr) = stream.into_split();
    let sem = Semaphore::new(phase.depth);
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();

    let writer = async {
        let tx = tx;
        let mut wbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut stop = false;
        while !stop {
            wbuf.clear();
            let mut batch = 0usize;
            loop {
                let due = schedule.map(|s| phase.start + s.due(*k));
                let now = Instant::now();
                let past = match due {
                    Some(d) => phase.deadline.is_some_and(|e| d >= e),
                    None => phase.deadline.is_some_and(|e| now >= e),
                };
                if past {
                    stop = true;
                    break;
                }
                if let Some(d) = due {
                    if d > now {
                        if batch > 0 {
                            break; // send what is due now, then wait
                        }
                        wait_until(d, cfg.spin).await;
                    }
                }
                if batch == 0 {
                    sem.acquire().await.expect("semaphore open").forget();
                } else if let Ok(p) = sem.try_acquire() {
                    p.forget();
                } else {
                    break;
                }
                let Some(op) = source.next(cfg) else {
                    sem.add_permits(1);
                    *exhausted = true;
                    stop = true;
                    break;
                };
                let sent_at = Instant::now();
                // Open loop: latency runs from the due time, or from the
                // send if the request left early.
                let t0 = match due {
                    Some(d) => {
                        *max_lag = (*max_lag).max(sent_at.saturating_duration_since(d));
                        d.min(sent_at)
                    }
                    None => sent_at,
                };
                cfg.ks.write_request(&op, &mut wbuf);
                // The reader learns of a request before its bytes leave.
                let _ = tx.send(Pending { op, t0 });
                sent.fetch_add(1, Ordering::Relaxed);
                *k += 1;
                batch += 1;
                if wbuf.len() >= 256 * 1024 {
                    break;
                }
            }
            if !wbuf.is_empty() {
                wr.write_all(&wbuf).await.map_err(Failure::Io)?;
            }
        }
        Ok::<(), Failure>(())
    };

    let reader = async {
        let mut rbuf = vec![0u8; 64 * 1024];
        let (mut lo, mut hi) = (0usize, 0usize);
        while let Some(p) = rx.recv().await {
            loop {
                match parse_reply(&rbuf[lo..hi], &p.op, &cfg.ks, cfg.verify) {
                    Ok(Some((o, n))) => {
                        lo += n;
                        let ns = p.t0.elapsed().as_nanos() as u64;
                        rec.push(p.op.kind(), o, ns);
                        done.fetch_add(1, Ordering::Relaxed);
                        sem.add_permits(1);
                        break;
                    }
                    Ok(None) => {
                        if lo > 0 {
                            rbuf.copy_within(lo..hi, 0);
                            hi -= lo;
                            lo = 0;
                        }
                        if hi == rbuf.len() {
                            rbuf.resize(rbuf.len() * 2, 0);
                        }
                        let n = match tokio::time::timeout(cfg.timeout, rd.read(&mut rbuf[hi..]))
                            .await
                        {
                            Err(_) => return Err(Failure::Timeout),
                            Ok(Err(e)) => return Err(Failure::Io(e)),
                            Ok(Ok(0)) => return Err(Failure::Closed),
                            Ok(Ok(n)) => n,
                        };
                        hi += n;
                    }
                    Err(e) => return Err(Failure::Protocol(e.0)),
                }
            }
        }
        if hi > lo {
            return Err(Failure::Protocol(format!(
                "{} bytes after the last reply: {:?}",
                hi - lo,
                crate::proto::show(&rbuf[lo..hi])
            )));
        }
        Ok::<(), Failure>(())
    };

    tokio::try_join!(writer, reader)?;
    rd.reunite(wr)
        .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake server: to every request it answers `reply` (None: nothing),
    /// then closes if `close`. Accepts any number of connections.
    async fn fake_server(reply: Option<&'static [u8]>, close: bool) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if let Some(r) = reply {
                            let _ = s.write_all(r).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// One get (of the only key) against `addr`; the stats and how long it took.
    async fn one_get(addr: String) -> (Stats, Duration) {
        let cfg = Arc::new(Config {
            addr,
            ks: KeySpace::new("lg:", 16, 1, 10).unwrap(),
            mix: Mix {
                set_ratio: 0.0,
                mget: 1,
                keys: 1,
            },
            connections: 1,
            timeout: Duration::from_millis(300),
            verify: true,
            spin: false,
        });
        let shared = Arc::new(Mutex::new(Stats::default()));
        let t = Instant::now();
        let phase = Phase {
            work: Work::Measure {
                rate: None,
                ops: Some(1),
                seed: 1,
            },
            depth: 1,
            start: t,
            deadline: Some(t + Duration::from_secs(5)),
            expect_hits: true,
        };
        run(cfg, 0, None, phase, shared.clone()).await;
        let s = std::mem::take(&mut *shared.lock().unwrap());
        (s, t.elapsed())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_good_reply_counts() {
        let (s, _) = block_on(async {
            one_get(
                fake_server(
                    Some(b"VALUE lg:0000000000000 0 10\r\n0:cdefghij\r\nEND\r\n"),
                    false,
                )
                .await,
            )
            .await
        });
        assert_eq!(
            (s.ops(), s.hits, s.errors.total()),
            (1, 1, 0),
            "{:?}",
            s.errors
        );
    }

    #[test]
    fn a_truncated_reply_is_an_error_not_a_hang() {
        let (s, took) = block_on(async {
            one_get(fake_server(Some(b"VALUE lg:0000000000000 0 10\r\n0:bc"), true).await).await
        });
        assert_eq!(s.ops(), 0);
        assert_eq!(s.errors.connection, 1, "{:?}", s.errors);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn no_reply_times_out() {
        let (s, took) = block_on(async { one_get(fake_server(None, false).await).await });
        assert_eq!(s.errors.timeout, 1, "{:?}", s.errors);
        assert_eq!(s.ops(), 0);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn garbage_is_a_protocol_error_and_error_replies_count() {
        let (s, _) =
            block_on(async { one_get(fake_server(Some(b"HELLO\r\n"), false).await).await });
        assert_eq!(s.errors.protocol, 1, "{:?}", s.errors);
        let (s, _) = block_on(async {
            one_get(fake_server(Some(b"SERVER_ERROR out of memory\r\n"), false).await).await
        });
        assert_eq!((s.errors.server_error, s.ops()), (1, 0), "{:?}", s.errors);
        let (s, _) = block_on(async { one_get(fake_server(Some(b"END\r\n"), false).await).await });
        assert_eq!(s.errors.unexpected_miss, 1, "a miss after a prefill");
    }
}
