//! The hash-report acceptance figures (MemCachier's experiment).

use memroute_hash::report::{compute, Options};
use memroute_hash::DistributionKind;

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
        if mv.kind == DistributionKind::Modula {
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
    let table = memroute_hash::report::run_with(
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
