//! One process per spool directory: a `LOCK` file naming its owner.
//!
//! The file holds the owner's pid and its start time (from /proc), written
//! with `create_new`, so two processes cannot both take it. A `LOCK` left
//! by a process that died (kill -9, power loss) is recognised as stale:
//! no process with that pid, or one that started at another time (the pid
//! was reused). A pid equal to our own is stale too: a restarted container
//! often gets the same pid, and this process's own pools are kept apart by
//! the in-process registry.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub struct DirLock {
    path: PathBuf,
    content: String,
}

/// The start time of process `pid` (field 22 of /proc/<pid>/stat), if it
/// exists and /proc is there.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the process a `LOCK` file names still runs.
fn holder_alive(content: &str) -> Option<u32> {
    let mut parts = content.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started = parts.next()?;
    if pid == std::process::id() {
        return None;
    }
    (start_time(pid)? == started).then_some(pid)
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, String> {
        let path = dir.join("LOCK");
        let me = std::process::id();
        let content = format!(
            "{me} {}\n",
            start_time(me).unwrap_or_else(|| "unknown".into())
        );
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(content.as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| {
                            let _ = std::fs::remove_file(&path);
                            format!("spool directory {} is not writable: {e}", dir.display())
                        })?;
                    return Ok(DirLock { path, content });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    if let Some(pid) = holder_alive(&held) {
                        return Err(format!(
                            "spool directory {} is in use by process {pid} (see its LOCK file)",
                            dir.display()
                        ));
                    }
                    tracing::info!(dir = %dir.display(), stale = held.trim(), "taking over the spool lock of a process that is gone");
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(format!(
                                "spool directory {} is not writable: {e}",
                                dir.display()
                            ))
                        }
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "spool directory {} is not writable: {e}",
                        dir.display()
                    ))
                }
            }
        }
        Err(format!(
            "spool directory {}: another process keeps taking its LOCK",
            dir.display()
        ))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Only our own lock (never one another process took over).
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn stale_and_live_holders() {
        // pid 1 runs, but not since "0".
        assert_eq!(holder_alive("1 0\n"), None);
        let one = start_time(1).unwrap();
        assert_eq!(holder_alive(&format!("1 {one}\n")), Some(1));
        // Our own pid: a previous life of this pid, or this process.
        let me = std::process::id();
        assert_eq!(
            holder_alive(&format!("{me} {}", start_time(me).unwrap())),
            None
        );
        assert_eq!(holder_alive("garbage"), None);
        assert_eq!(holder_alive(""), None);
    }
}
