//! memroute-loadgen: a memcached text-protocol load generator with HDR
//! latency histograms, closed- and open-loop load, JSON results and an SVG
//! plot of the latency CDF of one or more runs. See docs/benchmarks.md.

mod client;
mod json;
mod proto;
mod schedule;
mod stats;
mod svg;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use client::{Config, Phase, Work};
use json::Value;
use proto::{KeySpace, Mix, OpKind};
use stats::{Stats, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "memroute-loadgen",
    version,
    about = "memcached text-protocol load generator with HDR latency histograms",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Draw the latency CDFs of saved runs (--json files) in one SVG.
    Plot(PlotArgs),
}

#[derive(Args, Debug)]
struct PlotArgs {
    /// Result files written with --json, one line each.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where to write the SVG.
    #[arg(long)]
    svg: PathBuf,
    /// Which latencies: all, get, set or mget.
    #[arg(long, default_value = "all")]
    op: String,
    /// Plot title.
    #[arg(long)]
    title: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Server to load, HOST:PORT.
    #[arg(short = 's', long, default_value = "127.0.0.1:11211")]
    server: String,
    /// TCP connections.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: u64,
    /// Requests in flight per connection (1: not pipelined). In rate mode,
    /// the most a connection has in flight; a request due beyond it waits.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Share of requests that are sets; the rest are gets.
    #[arg(long, default_value_t = 0.1)]
    set_ratio: f64,
    /// Keys per get: 1 sends `get KEY`, K > 1 a multi-get of K distinct keys.
    #[arg(long, default_value_t = 1)]
    mget: u32,
    /// Number of distinct keys (picked uniformly).
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Key length in bytes (prefix, then the key number zero-padded).
    #[arg(long, default_value_t = 64)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Key prefix.
    #[arg(long, default_value = "lg:")]
    key_prefix: String,
    /// Set every key before the measured run; a miss is then an error.
    #[arg(long)]
    prefill: bool,
    /// Length of the measured run (e.g. 10s, 500ms, 2m); default 10s unless
    /// --ops is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests in all (with --duration, whichever
    /// comes first).
    #[arg(short = 'n', long)]
    ops: Option<u64>,
    /// Open loop: send this many requests per second in all, on a fixed
    /// timetable, and measure latency from each request's due time.
    #[arg(long)]
    rate: Option<f64>,
    /// Rate mode: spin to each exact due time (costs CPU) instead of
    /// sending up to 1 ms early.
    #[arg(long)]
    spin: bool,
    /// Per-read timeout (and connect timeout).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Runtime threads (1: everything on one thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not check returned values against the keys' values.
    #[arg(long)]
    no_verify: bool,
    /// Name of this run in the JSON file and in plots (default: the server).
    #[arg(long)]
    label: Option<String>,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency CDF of this run as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Plot(p)) => plot_cmd(&p),
        None => run_cmd(&cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memroute-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// The measured run's results, ready to print and save.
struct Report {
    label: String,
    elapsed: Duration,
    stats: Stats,
    prefill: Option<(Duration, Stats)>,
}

fn run_cmd(a: &RunArgs) -> Result<ExitCode, String> {
    if a.connections == 0 || a.depth == 0 || a.threads == 0 {
        return Err("--connections, --depth and --threads must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&a.set_ratio) {
        return Err("--set-ratio must be between 0 and 1".into());
    }
    if a.mget == 0 {
        return Err("--mget must be at least 1".into());
    }
    if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be positive".into());
    }
    if a.ops == Some(0) {
        return Err("--ops must be at least 1".into());
    }
    let ks = KeySpace::new(&a.key_prefix, a.key_size, a.keys, a.value_size)?;
    let cfg = Arc::new(Config {
        addr: a.server.clone(),
        ks,
        mix: Mix {
            set_ratio: a.set_ratio,
            mget: a.mget,
            keys: a.keys,
        },
        connections: a.connections,
        timeout: a.timeout,
        verify: !a.no_verify,
        spin: a.spin,
    });
    let rt = if a.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("tokio runtime: {e}"))?;
    let report = rt.block_on(run(a, cfg))?;
    print_report(a, &report);
    if let Some(path) = &a.json {
        std::fs::write(path, report_json(a, &report).to_pretty())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &a.svg {
        let s = series_of(&report.label, &report.stats.all(), "");
        let doc = svg::plot(&format!("latency by percentile: {}", report.label), &[s]);
        std::fs::write(path, doc).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let errors =
        report.stats.errors.total() + report.prefill.as_ref().map_or(0, |p| p.1.errors.total());
    Ok(if errors > 0 || report.stats.ops() == 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_phase(
    cfg: &Arc<Config>,
    conns: Vec<Option<tokio::net::TcpStream>>,
    phase_of: impl Fn(u64) -> Phase,
) -> Result<(Vec<Option<tokio::net::TcpStream>>, Stats), String> {
    let shared = Arc::new(Mutex::new(Stats::default()));
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, s) in conns.into_iter().enumerate() {
        let phase = phase_of(i as u64);
        tasks.push(tokio::spawn(client::run(
            cfg.clone(),
            i as u64,
            s,
            phase,
            shared.clone(),
        )));
    }
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        back.push(t.await.map_err(|e| format!("connection task: {e}"))?);
    }
    let stats = std::mem::take(&mut *shared.lock().expect("stats lock"));
    Ok((back, stats))
}

async fn run(a: &RunArgs, cfg: Arc<Config>) -> Result<Report, String> {
    let mut conns = Vec::with_capacity(a.connections as usize);
    for _ in 0..a.connections {
        let s = client::connect(&a.server, a.timeout)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", a.server))?;
        conns.push(Some(s));
    }
    let mut prefill = None;
    if a.prefill {
        let t = Instant::now();
        let depth = a.depth.max(16);
        let (back, st) = run_phase(&cfg, conns, |_| Phase {
            work: Work::Prefill,
            depth,
            start: t,
            deadline: None,
            expect_hits: false,
        })
        .await?;
        conns = back;
        let took = t.elapsed();
        eprintln!(
            "memroute-loadgen: prefill: {} keys set in {:.2} s, {} errors",
            st.ops(),
            took.as_secs_f64(),
            st.errors.total()
        );
        prefill = Some((took, st));
    }
    let duration = run_duration(a);
    // A common start, a little ahead, so every timetable begins together.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = duration.map(|d| start + d);
    let c = a.connections;
    let expect_hits = a.prefill;
    let (_, stats) = run_phase(&cfg, conns, |i| Phase {
        work: Work::Measure {
            rate: a.rate,
            ops: a.ops.map(|n| n / c + u64::from(i < n % c)),
            seed: a.seed,
        },
        depth: a.depth,
        start,
        deadline,
        expect_hits,
    })
    .await?;
    let elapsed = start.elapsed();
    Ok(Report {
        label: a.label.clone().unwrap_or_else(|| a.server.clone()),
        elapsed,
        stats,
        prefill,
    })
}

/// The measured run's length: --duration, else 10 s unless --ops is given.
fn run_duration(a: &RunArgs) -> Option<Duration> {
    match (a.duration, a.ops) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn describe(a: &RunArgs) -> String {
    let mode = match a.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".into(),
    };
    let gets = if a.mget > 1 {
        format!("multi-gets of {} keys", a.mget)
    } else {
        "gets".into()
    };
    format!(
        "{mode}, {} connections x depth {}, {:.0}% sets / {:.0}% {gets}, {} keys of {} B, values of {} B{}",
        a.connections,
        a.depth,
        a.set_ratio * 100.0,
        (1.0 - a.set_ratio) * 100.0,
        a.keys,
        a.key_size,
        a.value_size,
        if a.prefill { ", prefilled" } else { "" }
    )
}

fn print_report(a: &RunArgs, r: &Report) {
    let s = &r.stats;
    println!("memroute-loadgen {} ({})", a.server, r.label);
    println!("  {}", describe(a));
    let ops = s.ops();
    print!(
        "  {:.2} s: {} ops, {:.0} ops/s",
        r.elapsed.as_secs_f64(),
        ops,
        rate(ops, r.elapsed)
    );
    if let Some(asked) = a.rate {
        print!(
            " (asked {asked}/s; latest send {:.0} us behind schedule)",
            s.max_send_lag_ns as f64 / 1000.0
        );
    }
    println!();
    println!(
        "  hits {}, misses {}, errors {}",
        s.hits,
        s.misses,
        s.errors.total()
    );
    println!(
        "  {:<5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "mean us"
    );
    let mut rows: Vec<(&str, Summary)> = OpKind::ALL
        .iter()
        .filter(|k| !s.hist[**k as usize].is_empty())
        .map(|k| (k.name(), stats::summarize(&s.hist[*k as usize])))
        .collect();
    rows.push(("all", stats::summarize(&s.all())));
    for (name, m) in rows {
        println!(
            "  {:<5} {:>10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            m.count,
            rate(m.count, r.elapsed),
            m.p50,
            m.p90,
            m.p99,
            m.p99_9,
            m.max,
            m.mean
        );
    }
    if s.errors.total() > 0 {
        let list: Vec<String> = s
            .errors
            .fields()
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  errors: {}", list.join(", "));
    }
}

fn num(v: f64) -> Value {
    Value::Num(v)
}

fn summary_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    let m = stats::summarize(h);
    let cdf = stats::cdf(h)
        .into_iter()
        .map(|(p, us)| Value::Arr(vec![num(round(p, 6)), num(round(us, 3))]))
        .collect();
    Value::Obj(vec![
        ("count".into(), num(m.count as f64)),
        ("mean".into(), num(round(m.mean, 3))),
        ("min".into(), num(m.min)),
        ("p50".into(), num(m.p50)),
        ("p90".into(), num(m.p90)),
        ("p99".into(), num(m.p99)),
        ("p99_9".into(), num(m.p99_9)),
        ("p99_99".into(), num(m.p99_99)),
        ("max".into(), num(m.max)),
        ("cdf".into(), Value::Arr(cdf)),
    ])
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn errors_json(e: &stats::Errors) -> Value {
    let mut f: Vec<(String, Value)> = vec![("total".into(), num(e.total() as f64))];
    f.extend(
        e.fields()
            .iter()
            .map(|(k, v)| (k.to_string(), num(*v as f64))),
    );
    Value::Obj(f)
}

fn report_json(a: &RunArgs, r: &Report) -> Value {
    let s = &r.stats;
    let opt = |v: Option<f64>| v.map_or(Value::Null, Value::Num);
    let config = Value::Obj(vec![
        ("connections".into(), num(a.connections as f64)),
        ("depth".into(), num(a.depth as f64)),
        ("set_ratio".into(), num(a.set_ratio)),
        ("mget".into(), num(f64::from(a.mget))),
        ("keys".into(), num(f64::from(a.keys))),
        ("key_size".into(), num(a.key_size as f64)),
        ("value_size".into(), num(a.value_size as f64)),
        ("prefill".into(), Value::Bool(a.prefill)),
        (
            "mode".into(),
            Value::Str(if a.rate.is_some() { "open" } else { "closed" }.into()),
        ),
        ("rate".into(), opt(a.rate)),
        (
            "duration_s".into(),
            opt(run_duration(a).map(|d| d.as_secs_f64())),
        ),
        ("ops_limit".into(), opt(a.ops.map(|n| n as f64))),
        ("timeout_ms".into(), num(a.timeout.as_millis() as f64)),
        ("threads".into(), num(a.threads as f64)),
        ("seed".into(), num(a.seed as f64)),
        ("verify".into(), Value::Bool(!a.no_verify)),
        ("spin".into(), Value::Bool(a.spin)),
    ]);
    let mut lat = vec![("all".to_string(), summary_json(&s.all()))];
    for k in OpKind::ALL {
        let h = &s.hist[k as usize];
        if !h.is_empty() {
            lat.push((k.name().into(), summary_json(h)));
        }
    }
    let ops = s.ops();
    let mut fields = vec![
        ("tool".into(), Value::Str("memroute-loadgen".into())),
        (
            "version".into(),
            Value::Str(env!("CARGO_PKG_VERSION").into()),
        ),
        ("label".into(), Value::Str(r.label.clone())),
        ("server".into(), Value::Str(a.server.clone())),
        ("config".into(), config),
        ("elapsed_s".into(), num(round(r.elapsed.as_secs_f64(), 6))),
        ("ops".into(), num(ops as f64)),
        ("sent".into(), num(s.sent as f64)),
        ("ops_per_sec".into(), num(round(rate(ops, r.elapsed), 3))),
        (
            "max_send_lag_us".into(),
            num(round(s.max_send_lag_ns as f64 / 1000.0, 3)),
        ),
        ("hits".into(), num(s.hits as f64)),
        ("misses".into(), num(s.misses as f64)),
        ("errors".into(), errors_json(&s.errors)),
        ("latency_us".into(), Value::Obj(lat)),
    ];
    if let Some((took, p)) = &r.prefill {
        fields.push((
            "prefill".into(),
            Value::Obj(vec![
                ("ops".into(), num(p.ops() as f64)),
                ("seconds".into(), num(round(took.as_secs_f64(), 6))),
                ("errors".into(), errors_json(&p.errors)),
            ]),
        ));
    }
    Value::Obj(fields)
}

fn series_of(label: &str, h: &hdrhistogram::Histogram<u64>, op: &str) -> svg::Series {
    let m = stats::summarize(h);
    svg::Series {
        label: if op.is_empty() {
            label.to_string()
        } else {
            format!("{label} ({op})")
        },
        points: stats::cdf(h),
        count: m.count,
        note: format!("p50 {:.0} / p99 {:.0} / max {:.0} µs", m.p50, m.p99, m.max),
    }
}

fn plot_cmd(p: &PlotArgs) -> Result<ExitCode, String> {
    let mut series = Vec::new();
    for f in &p.files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        let v = json::parse(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        series.push(series_from_json(&v, &p.op).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    let title = p
        .title
        .clone()
        .unwrap_or_else(|| format!("latency by percentile ({})", p.op));
    std::fs::write(&p.svg, svg::plot(&title, &series))
        .map_err(|e| format!("writing {}: {e}", p.svg.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn series_from_json(v: &Value, op: &str) -> Result<svg::Series, String> {
    let label = v
        .get("label")
        .and_then(Value::as_str)
        .ok_or("no \"label\": not a memroute-loadgen result")?;
    let lat = v
        .get("latency_us")
        .and_then(|l| l.get(op))
        .ok_or_else(|| format!("no latency_us.{op} in the file"))?;
    let field = |k: &str| lat.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut points = Vec::new();
    for pt in lat.get("cdf").and_then(Value::as_array).ok_or("no cdf")? {
        match pt.as_array() {
            Some([p, us]) => points.push((
                p.as_f64().ok_or("bad cdf point")?,
                us.as_f64().ok_or("bad cdf point")?,
            )),
            _ => return Err("bad cdf point".into()),
        }
    }
    Ok(svg::Series {
        label: label.to_string(),
        points,
        count: field("count") as u64,
        note: format!(
            "p50 {:.0} / p99 {:.0} / max {:.0} µs",
            field("p50"),
            field("p99"),
            field("max")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn json_results_plot_back() {
        let mut st = Stats::default();
        for i in 1..=1000u64 {
            st.record(OpKind::Get, &proto::Outcome::default(), i * 1000, false);
        }
        let a = Cli::parse_from(["memroute-loadgen", "--label", "x<y"]).run;
        let r = Report {
            label: "x<y".into(),
            elapsed: Duration::from_secs(1),
            stats: st,
            prefill: None,
        };
        let text = report_json(&a, &r).to_pretty();
        let v = json::parse(&text).unwrap();
        let duration = v.get("config").and_then(|c| c.get("duration_s"));
        assert_eq!(duration.and_then(Value::as_f64), Some(10.0), "the default");
        assert_eq!(v.get("ops").and_then(Value::as_f64), Some(1000.0));
        let s = series_from_json(&v, "all").unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.points.last().unwrap().0, 100.0);
        assert!(series_from_json(&v, "set").is_err());
        let doc = svg::plot("t", &[s.clone(), s]);
        let names = svg::tests::check_xml(&doc).unwrap();
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
    }

    #[test]
    fn cli_defaults_and_plot() {
        let c = Cli::parse_from(["memroute-loadgen"]);
        assert!(c.cmd.is_none());
        assert_eq!(
            (c.run.connections, c.run.depth, c.run.keys),
            (50, 1, 10_000)
        );
        let c = Cli::parse_from([
            "memroute-loadgen",
            "plot",
            "a.json",
            "b.json",
            "--svg",
            "o.svg",
        ]);
        match c.cmd {
            Some(Cmd::Plot(p)) => assert_eq!(p.files.len(), 2),
            _ => panic!("plot subcommand"),
        }
    }
}
