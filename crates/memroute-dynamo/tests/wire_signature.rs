//! What the write-behind writer puts on the wire is signed as AWS checks
//! it. DynamoDB Local checks no signature, so a scripted HTTP/1.1 endpoint
//! records every request exactly as it arrives (method, path, each header,
//! body bytes) and the test signs that very request again with aws-sigv4
//! (the headers its SignedHeaders names, with the values received, the
//! body received, the time of its x-amz-date, the region and service
//! configured): the Authorization received must be aws-sigv4's. A header,
//! path or body that differs between what was signed and what hyper sent
//! would make every write fail on real AWS.
//!
//! The writes come from a write-behind store, as the proxy makes them: the
//! endpoint resolved by the SDK's rules, credentials from aws-config's
//! environment provider, the queue's writer, hyper. Both writers are run:
//! the direct one under test and the SDK's, which checks the checker.
//!
//! One test only: it sets the AWS_* environment variables of this test
//! process, which no other test may read at the same time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use memroute_dynamo::{BehindWriter, DynamoConfig, DynamoStore, WriteMode};
use memroute_proto::{Limits, Request};

const ACCESS_KEY: &str = "AKIDWIRETEST";
const SECRET: &str = "wire/Secret+Key=0123456789abcdefghijklmn";
/// Like an STS token: `/`, `+` and `=` in it.
const TOKEN: &str = "FwoGZXIvYXdzEBc/wire+session=token==";
const REGION: &str = "eu-west-2";

/// One request as it arrived.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Names lowercased, values as sent (without the surrounding spaces
    /// HTTP does not count), in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} sent twice: {self:?}");
        first
    }

    fn target(&self) -> &str {
        self.header("x-amz-target").unwrap_or("")
    }
}

/// The scripted endpoint: answers every request with a success DynamoDB
/// would give (no unprocessed items for a batch) and keeps it.
fn endpoint() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    // The threads end with the test process.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let keep = Arc::clone(&keep);
            std::thread::spawn(move || serve(stream, &keep));
        }
    });
    (port, seen)
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Received>>) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end_matches("\r\n").splitn(3, ' ');
        let (method, path, version) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or(""),
        );
        assert_eq!(version, "HTTP/1.1", "request line {line:?}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("header line without CRLF: {line:?}"));
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header without ':'");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a body of known length (not chunked)");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let received = Received {
            method,
            path,
            headers,
            body,
        };
        let reply = if received.target().ends_with(".BatchWriteItem") {
            r#"{"UnprocessedItems":{}}"#
        } else {
            "{}"
        };
        seen.lock().unwrap().push(received);
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n\
             x-amzn-RequestId: wire\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(stamp: &str) -> SystemTime {
    assert!(
        stamp.len() == 16 && &stamp[8..9] == "T" && stamp.ends_with('Z'),
        "x-amz-date {stamp:?}"
    );
    let n = |at: usize, len: usize| stamp[at..at + len].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(4, 2), n(6, 2));
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(9, 2) * 3600 + n(11, 2) * 60 + n(13, 2);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// Checks one received request's signature by signing it again; returns
/// the headers it signed.
fn check_signature(r: &Received, token: Option<&str>) -> Vec<String> {
    assert_eq!(r.method, "POST", "{r:?}");
    let authorization = r.header("authorization").expect("Authorization");
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .unwrap_or_else(|| panic!("not SigV4: {authorization}"));
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {authorization}"))
    };
    let stamp = r.header("x-amz-date").expect("x-amz-date");
    let time = parse_amz_date(stamp);
    let now = SystemTime::now();
    let off = now.duration_since(time).unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(300),
        "x-amz-date {stamp} is {off:?} off"
    );
    // The scope: our key, the request's day, the configured region.
    assert_eq!(
        field("Credential="),
        format!(
            "{ACCESS_KEY}/{}/{REGION}/dynamodb/aws4_request",
            &stamp[..8]
        )
    );
    let signed: Vec<&str> = field("SignedHeaders=").split(';').collect();
    let mut sorted = signed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(signed, sorted, "SignedHeaders sorted, once each");
    for required in ["host", "x-amz-date", "content-type"] {
        assert!(signed.contains(&required), "{required} unsigned: {r:?}");
    }
    assert_eq!(r.header("x-amz-security-token"), token, "{r:?}");
    if token.is_some() {
        assert!(signed.contains(&"x-amz-security-token"), "{r:?}");
    }
    // DynamoDB needs no x-amz-content-sha256; one sent must be signed and be
    // the body's hash (the payload hash signed is always the body's).
    if let Some(sha) = r.header("x-amz-content-sha256") {
        assert!(signed.contains(&"x-amz-content-sha256"), "{r:?}");
        assert_eq!(sha, hex_sha256(&r.body), "{r:?}");
    }
    let host = r.header("host").expect("Host");
    let headers: Vec<(&str, &str)> = signed
        .iter()
        .map(|name| {
            let value = r
                .header(name)
                .unwrap_or_else(|| panic!("{name} signed but not sent: {r:?}"));
            (*name, value)
        })
        .collect();
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}{}", r.path),
        headers.into_iter(),
        SignableBody::Bytes(&r.body),
    )
    .unwrap();
    let identity = Identity::from(Credentials::new(
        ACCESS_KEY,
        SECRET,
        token.map(str::to_owned),
        None,
        "wire-test",
    ));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("dynamodb")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let expected = instructions
        .headers()
        .find(|(n, _)| *n == "authorization")
        .map(|(_, v)| v.to_owned())
        .unwrap();
    assert_eq!(authorization, expected, "signature of {r:?}");
    signed.iter().map(|s| s.to_string()).collect()
}

fn request(line: &str, value: &[u8]) -> Request {
    Request::parse(line.as_bytes(), value, &Limits::default()).unwrap()
}

async fn run(store: &DynamoStore, line: &str, value: &[u8]) -> String {
    let reply = store.execute(&request(line, value)).await;
    String::from_utf8_lossy(reply.raw()).into_owned()
}

/// Sets, a delete of a queued key, and (batched) a batch of both, through
/// a write-behind store; returns when the store has sent them all.
async fn write_through_queue(config: DynamoConfig) {
    let store = DynamoStore::new(config).expect("store");
    // A value with every byte, so the body's JSON escapes and base64 run.
    let value: Vec<u8> = (0..=255u8).collect();
    for key in ["plain", "q\"uo\\te", "ünï/cødé%"] {
        let line = format!("set {key} 5 3600 {}", value.len());
        assert_eq!(run(&store, &line, &value).await, "STORED\r\n");
    }
    assert_eq!(run(&store, "set doomed 0 0 1", b"x").await, "STORED\r\n");
    assert_eq!(run(&store, "delete doomed", b"").await, "DELETED\r\n");
    assert!(store.drain_blocking(Duration::from_secs(20)).drained);
    let stats = store.stats();
    assert_eq!((stats.failed, stats.errors), (0, 0), "{stats:?}");
}

fn set_env(token: Option<&str>) {
    // Safe in this process: its only test runs one case at a time and
    // nothing else reads the environment meanwhile.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    match token {
        Some(t) => std::env::set_var("AWS_SESSION_TOKEN", t),
        None => std::env::remove_var("AWS_SESSION_TOKEN"),
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_requests_are_signed_as_sent() {
    let (port, seen) = endpoint();
    for writer in [BehindWriter::Direct, BehindWriter::Sdk] {
        for token in [None, Some(TOKEN)] {
            // The endpoint as given, and with a path of its own (the SDK
            // sends the operation's "/" under it).
            for path in ["", "/ddb/prefix", "/ddb/prefix/"] {
                for batch_writes in [false, true] {
                    let case =
                        format!("{writer:?} token={token:?} path={path:?} batch={batch_writes}");
                    set_env(token);
                    seen.lock().unwrap().clear();
                    write_through_queue(DynamoConfig {
                        table: "wire".into(),
                        region: Some(REGION.into()),
                        endpoint: Some(format!("http://127.0.0.1:{port}{path}")),
                        write_mode: WriteMode::Behind,
                        writer,
                        batch_writes,
                        max_attempts: 1,
                        ..DynamoConfig::default()
                    })
                    .await;
                    let received = seen.lock().unwrap().clone();
                    let targets: Vec<&str> = received.iter().map(Received::target).collect();
                    let has =
                        |op: &str| targets.contains(&format!("DynamoDB_20120810.{op}").as_str());
                    if batch_writes {
                        assert!(has("BatchWriteItem"), "{case}: {targets:?}");
                    } else {
                        assert!(has("PutItem") && has("DeleteItem"), "{case}: {targets:?}");
                    }
                    for r in &received {
                        let want_path = format!("{}/", path.trim_end_matches('/'));
                        assert_eq!(r.path, want_path, "{case}");
                        let signed = check_signature(r, token);
                        if writer == BehindWriter::Direct {
                            // Exactly what it signs, plus what HTTP framing
                            // and the signature itself need.
                            assert_eq!(r.header("x-amz-content-sha256"), None, "{case}");
                            for (name, _) in &r.headers {
                                assert!(
                                    ["content-length", "authorization"].contains(&name.as_str())
                                        || signed.contains(name),
                                    "{case}: {name} sent unsigned"
                                );
                            }
                            assert_eq!(
                                r.header("content-type"),
                                Some("application/x-amz-json-1.0"),
                                "{case}"
                            );
                            assert_eq!(
                                r.header("host"),
                                Some(format!("127.0.0.1:{port}").as_str())
                            );
                        }
                    }
                }
            }
        }
    }
}
