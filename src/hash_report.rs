//! The distribution quality report behind `memroute hash-report`.
//!
//! This module owns the reproduction of MemCachier's consistent-hashing
//! experiment ("9 backends, 100 rounds with random backend ids"): for each
//! round it draws fresh backend names, builds each distribution and measures
//! every backend's share of the key space, then summarises the most/least
//! loaded ratio over the rounds.  It also measures how many keys move when a
//! pool grows from 3 to 4 backends and shrinks back, and draws the shares as
//! an SVG box plot.
//!
//! Shares are exact where the structure allows (rings: arc lengths over the
//! 32-bit hash space; Maglev: slot counts) and sampled otherwise (jump,
//! rendezvous: uniformly random 64-bit key hashes, which is what a good key
//! hash produces; the sampling noise is part of their figure).  Everything is
//! driven by a fixed-seed `SplitMix64`, so the output is reproducible.

use std::fmt::Write as _;
use std::path::Path;

use memroute_hash::sample::SplitMix64;
use memroute_hash::{Backend, Distribution, DistributionConfig, DistributionKind, RingMode};

/// Parameters of the experiment; [`Options::default`] is the published one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Backends per round in the balance experiment (9).
    pub backends: usize,
    /// Rounds with fresh random backend ids (100).
    pub rounds: usize,
    /// Sampled key hashes per round for jump and rendezvous (200 000).
    pub sample_keys: usize,
    /// Rounds of the 3 -> 4 backends movement experiment (20).
    pub move_rounds: usize,
    /// Sampled key hashes per movement round (100 000).
    pub move_keys: usize,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backends: 9,
            rounds: 100,
            sample_keys: 200_000,
            move_rounds: 20,
            move_keys: 100_000,
            seed: 0x6d65_6d72_6f75_7465, // "memroute"
        }
    }
}

/// Balance results for one distribution.
#[derive(Debug, Clone)]
pub struct BalanceRow {
    /// Human label.
    pub label: String,
    /// The distribution, as a configuration name.
    pub kind: DistributionKind,
    /// Whether shares are exact or sampled.
    pub exact: bool,
    /// Most/least loaded ratio of each round.
    pub ratios: Vec<f64>,
    /// Every backend's share in every round (fractions of 1).
    pub shares: Vec<f64>,
}

impl BalanceRow {
    /// Median of the per-round most/least loaded ratios.
    pub fn median_ratio(&self) -> f64 {
        percentile(&self.ratios, 0.5)
    }

    /// 95th percentile of the per-round ratios.
    pub fn p95_ratio(&self) -> f64 {
        percentile(&self.ratios, 0.95)
    }

    /// Worst round's ratio.
    pub fn max_ratio(&self) -> f64 {
        percentile(&self.ratios, 1.0)
    }

    /// Smallest share seen in any round.
    pub fn min_share(&self) -> f64 {
        percentile(&self.shares, 0.0)
    }

    /// Largest share seen in any round.
    pub fn max_share(&self) -> f64 {
        percentile(&self.shares, 1.0)
    }
}

/// Key movement results for one distribution (fractions of all keys).
#[derive(Debug, Clone)]
pub struct MoveRow {
    /// Human label.
    pub label: String,
    /// Keys that move when a 4th backend is appended to 3 (the same keys
    /// move back when it is removed again).
    pub grow: f64,
    /// Of the keys that moved on growth, the fraction that went to the new
    /// backend (1.0 = minimal disruption).
    pub grow_to_new: f64,
    /// Keys that move when the *first* of the 4 backends is removed instead.
    pub remove_first: f64,
}

/// The full report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The parameters used.
    pub options: Options,
    /// Balance rows, in table order.
    pub balance: Vec<BalanceRow>,
    /// Movement rows, in table order.
    pub movement: Vec<MoveRow>,
}

/// Linear-interpolated percentile `q` in `[0, 1]` (`values` need not be sorted).
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn balance_kinds() -> Vec<(String, DistributionKind)> {
    vec![
        (
            "ring, 1 point per backend".into(),
            DistributionKind::Ring {
                mode: RingMode::McproxyDefault,
                points: 1,
            },
        ),
        (
            "ring, 100 points per backend".into(),
            DistributionKind::Ring {
                mode: RingMode::McproxyDefault,
                points: 100,
            },
        ),
        (
            "ketama (libmemcached, 160 md5 points)".into(),
            DistributionKind::ring(RingMode::Libmemcached),
        ),
        ("maglev (M = 65537)".into(), DistributionKind::maglev()),
        ("jump".into(), DistributionKind::Jump),
        ("rendezvous".into(), DistributionKind::Rendezvous),
    ]
}

fn build(kind: DistributionKind, backends: &[Backend]) -> Distribution {
    DistributionConfig::new(kind)
        .build(backends)
        .expect("report distributions are valid")
}

fn shares_of(dist: &Distribution, rng: &mut SplitMix64, samples: usize) -> (Vec<f64>, bool) {
    if let Some(s) = dist.exact_shares() {
        return (s, true);
    }
    let mut count = vec![0u64; dist.len()];
    for _ in 0..samples {
        count[dist.pick_hash(rng.next())] += 1;
    }
    let shares = count
        .into_iter()
        .map(|c| c as f64 / samples as f64)
        .collect();
    (shares, false)
}

/// Runs the experiment.
pub fn compute(options: &Options) -> Report {
    let mut rng = SplitMix64::new(options.seed);
    let kinds = balance_kinds();
    let mut balance: Vec<BalanceRow> = kinds
        .iter()
        .map(|(label, kind)| BalanceRow {
            label: label.clone(),
            kind: *kind,
            exact: true,
            ratios: Vec::new(),
            shares: Vec::new(),
        })
        .collect();
    for _ in 0..options.rounds {
        let backends: Vec<Backend> = (0..options.backends).map(|_| rng.backend()).collect();
        for row in balance.iter_mut() {
            let dist = build(row.kind, &backends);
            let (shares, exact) = shares_of(&dist, &mut rng, options.sample_keys);
            row.exact = exact;
            let max = shares.iter().copied().fold(f64::MIN, f64::max);
            let min = shares.iter().copied().fold(f64::MAX, f64::min);
            row.ratios.push(max / min);
            row.shares.extend(shares);
        }
    }

    let move_kinds: Vec<(String, DistributionKind)> = vec![
        (
            "ring, 100 points per backend".into(),
            DistributionKind::Ring {
                mode: RingMode::McproxyDefault,
                points: 100,
            },
        ),
        (
            "ketama (libmemcached)".into(),
            DistributionKind::ring(RingMode::Libmemcached),
        ),
        ("maglev (M = 65537)".into(), DistributionKind::maglev()),
        ("jump".into(), DistributionKind::Jump),
        ("rendezvous".into(), DistributionKind::Rendezvous),
        ("modula".into(), DistributionKind::Modula),
    ];
    let mut movement = Vec::new();
    for (label, kind) in move_kinds {
        let (mut grow, mut to_new, mut remove_first) = (0u64, 0u64, 0u64);
        let mut rng = SplitMix64::new(options.seed ^ 0x3434);
        for _ in 0..options.move_rounds {
            let four: Vec<Backend> = (0..4).map(|_| rng.backend()).collect();
            let d3 = build(kind, &four[..3]);
            let d4 = build(kind, &four);
            let d3b = build(kind, &four[1..]);
            for _ in 0..options.move_keys {
                let h = rng.next();
                let b4 = d4.pick_hash(h);
                if d3.pick_hash(h) != b4 {
                    grow += 1;
                    if b4 == 3 {
                        to_new += 1;
                    }
                }
                // d3b indexes are shifted by one relative to d4.
                if d3b.pick_hash(h) + 1 != b4 {
                    remove_first += 1;
                }
            }
        }
        let total = (options.move_rounds * options.move_keys) as f64;
        movement.push(MoveRow {
            label,
            grow: grow as f64 / total,
            grow_to_new: if grow == 0 {
                1.0
            } else {
                to_new as f64 / grow as f64
            },
            remove_first: remove_first as f64 / total,
        });
    }
    Report {
        options: options.clone(),
        balance,
        movement,
    }
}

impl Report {
    /// The text table `memroute hash-report` prints.
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "memroute hash-report: {} backends, {} rounds with random backend ids (seed {:#x})",
            o.backends, o.rounds, o.seed
        );
        let _ = writeln!(
            s,
            "\nLoad balance: share of the key space per backend (ideal {:.2}%)",
            100.0 / o.backends as f64
        );
        let _ = writeln!(
            s,
            "{:<40} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
            "distribution", "shares", "median", "p95", "worst", "min", "max"
        );
        let _ = writeln!(
            s,
            "{:<40} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
            "", "", "max/min", "max/min", "max/min", "share", "share"
        );
        for r in &self.balance {
            let _ = writeln!(
                s,
                "{:<40} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>8.2}% {:>8.2}%",
                r.label,
                if r.exact { "exact" } else { "sampled" },
                r.median_ratio(),
                r.p95_ratio(),
                r.max_ratio(),
                100.0 * r.min_share(),
                100.0 * r.max_share()
            );
        }
        let _ = writeln!(
            s,
            "(sampled: {} random key hashes per round, so a few % of the ratio is sampling noise)",
            o.sample_keys
        );
        let _ = writeln!(
            s,
            "\nKey movement: {} rounds x {} key hashes, random backend ids",
            o.move_rounds, o.move_keys
        );
        let _ = writeln!(
            s,
            "{:<40} {:>12} {:>12} {:>14}",
            "distribution", "3->4 and", "moved keys", "4->3 removing"
        );
        let _ = writeln!(
            s,
            "{:<40} {:>12} {:>12} {:>14}",
            "", "back: moved", "to new one", "first: moved"
        );
        for m in &self.movement {
            let _ = writeln!(
                s,
                "{:<40} {:>11.1}% {:>11.1}% {:>13.1}%",
                m.label,
                100.0 * m.grow,
                100.0 * m.grow_to_new,
                100.0 * m.remove_first
            );
        }
        let _ = writeln!(
            s,
            "(ideal for a consistent distribution: 25% move, all of them to the new backend)"
        );
        s
    }

    /// An SVG box plot of the per-backend shares of each balance row: the
    /// left panel shows every row on a full scale, the right one zooms in on
    /// the rows whose shares stay within 5-20% (the 1-point ring does not).
    pub fn svg(&self) -> String {
        let (w, h) = (1200.0_f64, 540.0_f64);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Share of keys per backend: {} backends, {} rounds with random backend ids</text>"#,
            w / 2.0,
            self.options.backends,
            self.options.rounds
        );
        let all: Vec<&BalanceRow> = self.balance.iter().collect();
        let max_share = all.iter().map(|r| r.max_share()).fold(0.0, f64::max);
        let full_max = ((max_share * 100.0) / 10.0).ceil() * 10.0;
        let zoom: Vec<&BalanceRow> = all
            .iter()
            .copied()
            .filter(|r| r.min_share() >= 0.05 && r.max_share() <= 0.20)
            .collect();
        let panel = Panel {
            x: 10.0,
            width: 520.0,
            top: 60.0,
            height: h - 60.0 - 140.0,
            y_min: 0.0,
            y_max: full_max.max(20.0),
            step: 10.0,
            title: "all distributions",
        };
        panel.draw(&mut s, &all, self.options.backends);
        if !zoom.is_empty() {
            let panel = Panel {
                x: 540.0,
                width: w - 550.0,
                y_min: 5.0,
                y_max: 20.0,
                step: 2.5,
                title: "zoom: 5% to 20%",
                ..panel
            };
            panel.draw(&mut s, &zoom, self.options.backends);
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#444">boxes: quartiles of all per-backend shares over all rounds; whiskers: min and max; number: median of the per-round most/least loaded ratio; dashed red line: ideal share {:.2}%; seed {:#x}</text>"##,
            w / 2.0,
            h - 14.0,
            100.0 / self.options.backends as f64,
            self.options.seed
        );
        s.push_str("</svg>\n");
        s
    }
}

/// One box-plot panel of the SVG.
#[derive(Clone, Copy)]
struct Panel {
    x: f64,
    width: f64,
    top: f64,
    height: f64,
    y_min: f64,
    y_max: f64,
    step: f64,
    title: &'static str,
}

impl Panel {
    fn draw(&self, s: &mut String, rows: &[&BalanceRow], backends: usize) {
        let left = self.x + 55.0;
        let right = self.x + self.width;
        let plot_w = right - left;
        let bottom = self.top + self.height;
        let y = |pct: f64| {
            let t = ((pct - self.y_min) / (self.y_max - self.y_min)).clamp(0.0, 1.0);
            bottom - self.height * t
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text>"#,
            left + plot_w / 2.0,
            self.top - 12.0,
            self.title
        );
        let mut tick = self.y_min;
        while tick <= self.y_max + 1e-9 {
            let ty = y(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{left:.1}" y1="{ty:.1}" x2="{right:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}%</text>"##,
                left - 6.0,
                ty + 4.0
            );
            tick += self.step;
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1} {:.1}) rotate(-90)" text-anchor="middle">share of keys</text>"#,
            self.x + 10.0,
            self.top + self.height / 2.0
        );
        let ideal = 100.0 / backends as f64;
        // Labelled in the caption: any spot on the line is under a box.
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{0:.1}" x2="{right:.1}" y2="{0:.1}" stroke="#c00" stroke-dasharray="6,4"/>"##,
            y(ideal)
        );
        let slot = plot_w / rows.len().max(1) as f64;
        for (i, r) in rows.iter().enumerate() {
            let pct: Vec<f64> = r.shares.iter().map(|v| v * 100.0).collect();
            let (mn, q1, med, q3, mx) = (
                percentile(&pct, 0.0),
                percentile(&pct, 0.25),
                percentile(&pct, 0.5),
                percentile(&pct, 0.75),
                percentile(&pct, 1.0),
            );
            let cx = left + slot * (i as f64 + 0.5);
            let bw = slot * 0.45;
            let _ = writeln!(
                s,
                r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#333"/>"##,
                y(mx),
                y(mn)
            );
            for v in [mn, mx] {
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#333"/>"##,
                    cx - bw / 4.0,
                    y(v),
                    cx + bw / 4.0
                );
            }
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="#9ecae1" stroke="#333"/>"##,
                cx - bw / 2.0,
                y(q3),
                (y(q1) - y(q3)).max(0.5)
            );
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#08306b" stroke-width="2"/>"##,
                cx - bw / 2.0,
                y(med),
                cx + bw / 2.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{:.3}</text>"#,
                (y(mx) - 6.0).max(self.top + 12.0),
                r.median_ratio()
            );
            // Label: the part before the first comma or parenthesis, then
            // the rest wrapped into short lines so neighbours do not overlap.
            let (l1, rest) = match r.label.find([',', '(']) {
                Some(p) => (
                    r.label[..p].trim(),
                    r.label[p..].trim_start_matches(',').trim(),
                ),
                None => (r.label.as_str(), ""),
            };
            let mut lines = vec![l1.to_string()];
            let mut cur = String::new();
            for word in rest.split_whitespace() {
                if !cur.is_empty() && cur.len() + word.len() > 14 {
                    lines.push(std::mem::take(&mut cur));
                }
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(word);
            }
            if !cur.is_empty() {
                lines.push(cur);
            }
            lines.push(if r.exact { "exact" } else { "sampled" }.to_string());
            let last = lines.len() - 1;
            for (j, line) in lines.iter().enumerate() {
                let (size, color) = match j {
                    0 => (12, "#000"),
                    j if j == last => (10, "#666"),
                    _ => (10, "#000"),
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="{size}" fill="{color}">{}</text>"#,
                    bottom + 18.0 + 13.0 * j as f64,
                    xml_escape(line)
                );
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Runs the report with the default [`Options`], writes the SVG box plot to
/// `out_svg` and returns the text table.
pub fn run(out_svg: &Path) -> std::io::Result<String> {
    run_with(&Options::default(), out_svg)
}

/// [`run`] with explicit options.
pub fn run_with(options: &Options, out_svg: &Path) -> std::io::Result<String> {
    let report = compute(options);
    std::fs::write(out_svg, report.svg())?;
    Ok(report.table())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&v, 0.5), 2.5);
    }

    #[test]
    fn splitmix_is_stable() {
        // First output of SplitMix64 seeded with 0 (published reference).
        assert_eq!(SplitMix64::new(0).next(), 0xe220_a839_7b1d_cdaf);
    }

    // The acceptance figures (MemCachier's experiment).
    #[test]
    fn report_reproduces_the_published_figures() {
        // Full 100 rounds for the exact (ring, Maglev) rows; fewer samples for
        // the sampled rows and the movement part to keep debug builds quick.
        let opts = Options {
            sample_keys: 20_000,
            move_rounds: 4,
            move_keys: 20_000,
            ..Options::default()
        };
        let r = compute(&opts);
        let row = |label: &str| {
            r.balance
                .iter()
                .find(|b| b.label.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label}"))
        };
        let one = row("ring, 1 point");
        let hundred = row("ring, 100 points");
        let maglev = row("maglev");
        assert_eq!(hundred.ratios.len(), 100);
        assert!(one.exact && hundred.exact && maglev.exact);
        // MemCachier: ~1.3 median with 100 points per backend.
        let m = hundred.median_ratio();
        assert!((1.2..1.45).contains(&m), "ring/100 median ratio {m}");
        assert!(one.median_ratio() > 3.0, "ring/1 {}", one.median_ratio());
        // Maglev with the default table: at most 1.01 in every round.
        assert!(maglev.max_ratio() <= 1.01, "maglev {}", maglev.max_ratio());
        for mv in &r.movement {
            if mv.label == "modula" {
                assert!(mv.grow > 0.6, "modula moved {}", mv.grow);
            } else {
                assert!(
                    (mv.grow - 0.25).abs() < 0.02,
                    "{}: moved {}",
                    mv.label,
                    mv.grow
                );
                assert!(mv.grow_to_new > 0.98, "{}: {}", mv.label, mv.grow_to_new);
            }
        }
        let table = r.table();
        assert!(table.contains("ring, 100 points per backend"));
        assert!(table.contains("Key movement"));
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1 + r.balance.len() + 5);
    }

    #[test]
    fn run_writes_the_svg() {
        let dir = std::env::temp_dir().join(format!("memroute-hash-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.svg");
        // A small run through the same entry point the binary uses.
        let table = run_with(
            &Options {
                rounds: 3,
                sample_keys: 2_000,
                move_rounds: 1,
                move_keys: 2_000,
                ..Options::default()
            },
            &path,
        )
        .unwrap();
        assert!(table.contains("Load balance"));
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
