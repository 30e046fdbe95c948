//! Prints the distribution quality report and writes its SVG box plot.
//!
//! `cargo run --release -p memroute-hash --example hash_report -- [--svg FILE]`
//! (default FILE: hash-report.svg).  `memroute hash-report` runs the same code.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut svg = PathBuf::from("hash-report.svg");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--svg" => match args.next() {
                Some(p) => svg = PathBuf::from(p),
                None => {
                    eprintln!("--svg needs a file name");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: hash_report [--svg FILE]");
                std::process::exit(2);
            }
        }
    }
    match memroute_hash::report::run(&svg) {
        Ok(table) => {
            print!("{table}");
            println!("\nSVG box plot written to {}", svg.display());
        }
        Err(e) => {
            eprintln!("writing {}: {e}", svg.display());
            std::process::exit(1);
        }
    }
}
