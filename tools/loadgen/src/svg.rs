//! The latency CDF as an SVG, written by hand: one line per run, latency
//! (linear, microseconds) against the percentile on a log scale of
//! 1 / (1 - p), as HdrHistogram's plots draw it (0%, 90%, 99%, 99.9%, ...).

use std::fmt::Write;

/// One run to draw.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// (percentile, latency in microseconds), percentile ascending.
    pub points: Vec<(f64, f64)>,
    /// Latencies recorded (sets how far right the axis goes).
    pub count: u64,
    /// Shown in the legend after the label, e.g. the p50/p99/max.
    pub note: String,
}

const W: f64 = 900.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Position of a percentile on the x axis, in "nines": 0% -> 0, 90% -> 1,
/// 99% -> 2, 99.9% -> 3 ...
pub fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        return f64::INFINITY;
    }
    (100.0 / (100.0 - p)).log10()
}

fn percent_label(n: u32) -> String {
    if n == 0 {
        return "0%".into();
    }
    let p = 100.0 - 10f64.powi(2 - n as i32);
    format!("{p:.prec$}%", prec = n.saturating_sub(2) as usize)
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v * 0.999_999 {
            return m * mag;
        }
    }
    10.0 * mag
}

pub fn plot(title: &str, series: &[Series]) -> String {
    let max_count = series.iter().map(|s| s.count).max().unwrap_or(0).max(1);
    let xmax_n = ((max_count as f64).log10().floor() as u32).clamp(2, 6);
    let xmax = f64::from(xmax_n);
    let ymax_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = nice_ceil(ymax_data);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |n: f64| LEFT + n.min(xmax) / xmax * pw;
    let sy = |us: f64| TOP + ph - us / ymax * ph;

    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Grid and axes.
    let _ = writeln!(o, r##"<g class="grid" stroke="#ddd" stroke-width="1">"##);
    for n in 0..=xmax_n {
        let x = sx(f64::from(n));
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#,
            TOP + ph
        );
    }
    let ystep = nice_ceil(ymax / 5.0);
    let mut yt = 0.0;
    while yt <= ymax * 1.000_001 {
        let y = sy(yt);
        let _ = writeln!(
            o,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
            LEFT + pw
        );
        yt += ystep;
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(o, r#"<g class="axis-labels">"#);
    for n in 0..=xmax_n {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sx(f64::from(n)),
            TOP + ph + 18.0,
            percent_label(n)
        );
    }
    let mut yt = 0.0;
    while yt <= ymax * 1.000_001 {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            sy(yt) + 4.0,
            fmt_us(yt)
        );
        yt += ystep;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 22.0
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (µs)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(o, "</g>");
    // The runs.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for &(p, us) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", sx(nines(p)), sy(us));
        }
        let _ = writeln!(
            o,
            r#"<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            pts.trim_end(),
            escape(&s.label)
        );
    }
    // Legend, top left (where CDFs are low).
    let _ = writeln!(o, r#"<g class="legend">"#);
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/>"#,
            LEFT + 12.0,
            LEFT + 36.0
        );
        let text = if s.note.is_empty() {
            escape(&s.label)
        } else {
            format!("{} ({})", escape(&s.label), escape(&s.note))
        };
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}">{text}</text>"#,
            LEFT + 42.0,
            y + 4.0
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(o, "</svg>");
    o
}

fn fmt_us(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small well-formedness check: every tag closed in order, attributes
    /// quoted, no stray `<` or `&` in text. Returns the element names seen.
    pub(crate) fn check_xml(doc: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = doc.trim_start();
        if let Some(r) = rest.strip_prefix("<?xml") {
            rest = &r[r.find("?>").ok_or("unclosed XML declaration")? + 2..];
        }
        let mut roots = 0;
        while let Some(lt) = rest.find('<') {
            check_text(&rest[..lt])?;
            if stack.is_empty() && !rest[..lt].trim().is_empty() {
                return Err("text outside the root".into());
            }
            let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or("close without open")?;
                if open != name.trim() {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?;
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
            {
                return Err(format!("bad name {name:?}"));
            }
            check_attrs(&body[name.len()..])?;
            if stack.is_empty() {
                roots += 1;
            }
            seen.push(name.to_string());
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        if !rest.trim().is_empty() {
            return Err("text after the root".into());
        }
        if !stack.is_empty() || roots != 1 {
            return Err(format!("unclosed {stack:?} or {roots} roots"));
        }
        Ok(seen)
    }

    fn check_text(t: &str) -> Result<(), String> {
        let mut s = t;
        while let Some(a) = s.find('&') {
            let semi = s[a..].find(';').ok_or("bare &")? + a;
            let ent = &s[a + 1..semi];
            if !["amp", "lt", "gt", "quot", "apos"].contains(&ent) {
                return Err(format!("unknown entity {ent}"));
            }
            s = &s[semi + 1..];
        }
        Ok(())
    }

    fn check_attrs(mut a: &str) -> Result<(), String> {
        loop {
            a = a.trim_start();
            if a.is_empty() {
                return Ok(());
            }
            let eq = a.find('=').ok_or(format!("attribute without value: {a}"))?;
            let rest = &a[eq + 1..];
            let q = rest.chars().next().ok_or("no attribute value")?;
            if q != '"' && q != '\'' {
                return Err(format!("unquoted attribute: {a}"));
            }
            let end = rest[1..].find(q).ok_or("unterminated attribute")? + 1;
            let v = &rest[1..end];
            if v.contains('<') {
                return Err("< in attribute".into());
            }
            check_text(v)?;
            a = &rest[end + 1..];
        }
    }

    fn series(label: &str, scale: f64) -> Series {
        Series {
            label: label.into(),
            points: vec![
                (0.0, 10.0 * scale),
                (50.0, 20.0 * scale),
                (90.0, 40.0 * scale),
                (99.0, 90.0 * scale),
                (99.9, 200.0 * scale),
                (100.0, 900.0 * scale),
            ],
            count: 50_000,
            note: "p50 20 µs".into(),
        }
    }

    #[test]
    fn svg_is_well_formed_with_one_line_per_run() {
        let runs = [
            series("memcached", 1.0),
            series("twemproxy <nutcracker> & co", 1.5),
            series("memroute \"proxy\"", 1.2),
        ];
        let doc = plot("latency CDF: get", &runs);
        let names = check_xml(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(names[0], "svg");
        assert_eq!(doc.matches(r#"class="series""#).count(), 3);
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 3);
        // 50k latencies: the axis goes to 99.99%.
        for l in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(doc.contains(&format!(">{l}</text>")), "{l}");
        }
        assert!(!doc.contains(">99.999%<"));
        assert!(doc.contains("&lt;nutcracker&gt; &amp; co"));
        let one = plot("t", &runs[..1]);
        assert!(check_xml(&one).is_ok());
        assert_eq!(one.matches(r#"class="series""#).count(), 1);
    }

    #[test]
    fn the_checker_catches_bad_xml() {
        assert!(check_xml("<svg><g></svg></g>").is_err());
        assert!(check_xml("<svg a=b/>").is_err());
        assert!(check_xml("<svg>a & b</svg>").is_err());
        assert!(check_xml("<svg/><svg/>").is_err());
        assert!(check_xml("<svg><g/></svg>").is_ok());
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), f64::INFINITY);
        assert_eq!(percent_label(0), "0%");
        assert_eq!(percent_label(1), "90%");
        assert_eq!(percent_label(2), "99%");
        assert_eq!(percent_label(4), "99.99%");
        assert_eq!(nice_ceil(830.0), 1000.0);
        assert_eq!(nice_ceil(120.0), 200.0);
        assert_eq!(nice_ceil(500.0), 500.0);
    }
}
