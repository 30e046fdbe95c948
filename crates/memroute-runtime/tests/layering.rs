//! The runtime's module layering, as docs/architecture.md states it,
//! checked on the source: Lua (mlua, `crate::lua`) is known only to the Lua
//! layer and the places that compose the server (`server`, `reload`,
//! `route_of`);
//! the backend client knows nothing of routes, connections or the server;
//! the route tree knows nothing of connections or the server.

use std::path::{Path, PathBuf};

/// Source files under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The lines of `path` that are code (comments and doc comments dropped).
fn code_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.starts_with("//"))
        .collect()
}

/// Every `(file, line)` under `src/` whose module is `module` (a file or a
/// directory) and whose code mentions one of `forbidden`.
fn violations(module: &str, forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = src.join(format!("{module}.rs"));
    let files = if file.exists() {
        vec![file]
    } else {
        rust_files(&src.join(module))
    };
    assert!(!files.is_empty(), "no module {module}");
    let mut found = Vec::new();
    for path in files {
        for line in code_lines(&path) {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}: {line}", path.display()));
            }
        }
    }
    found
}

const LUA: &[&str] = &["mlua", "crate::lua"];

#[test]
fn only_the_lua_layer_and_the_composition_roots_know_lua() {
    for module in [
        "route",
        "backend",
        "connection",
        "embedded",
        "admin",
        "stats",
        "store",
        "config",
        "metrics",
        "tls",
        "auth",
        "mcrouter",
        "discovery",
    ] {
        let found = violations(module, LUA);
        assert!(found.is_empty(), "{module} uses Lua: {found:#?}");
    }
}

#[test]
fn the_backend_client_stands_alone() {
    let found = violations(
        "backend",
        &[
            "crate::route",
            "crate::connection",
            "crate::server",
            "crate::embedded",
        ],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_route_tree_knows_no_connection_or_server() {
    let found = violations(
        "route",
        &["crate::connection", "crate::server", "crate::reload"],
    );
    assert!(found.is_empty(), "{found:#?}");
}
