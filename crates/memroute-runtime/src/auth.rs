//! Client authentication, as memcached does it: the text protocol's
//! password token (`-Y AUTHFILE`) and binary SASL PLAIN (`-S`).
//!
//! A connection starts unauthenticated, and [`authenticate`] runs before
//! anything else is read: it answers the authentication exchange itself,
//! refuses every other command with memcached's reply, and hands the
//! connection (and any bytes pipelined after the successful exchange) to
//! the normal request loop once the client is authenticated. So an
//! unauthenticated client reaches nothing: no cache, no route, no stats.
//!
//! - **Text (`-Y`)**: the client sends `set <any> <any> <any> <len>\r\n`
//!   and `<user> <password>\r\n` as the data block. memcached's replies:
//!   `STORED` on success, `CLIENT_ERROR authentication failure` for a wrong
//!   user or password, `CLIENT_ERROR unauthenticated` for any other line,
//!   `CLIENT_ERROR bad authentication token format` for a data block
//!   without two tokens, `CLIENT_ERROR bad command line termination` for
//!   one not ending in `\r\n`.
//! - **Binary SASL (`-S`)**: mechanism `PLAIN` only (`SASL_LIST_MECHS`
//!   answers `PLAIN`), checked against a password file
//!   (`MEMCACHED_SASL_PWDB` or `--sasl-pwdb`, as memcached's built-in
//!   password database). `SASL_AUTH` with the credentials answers
//!   `Authenticated`; `SASL_AUTH` with none answers "continue" (0x21) and
//!   `SASL_STEP` then carries them. A wrong password is status 0x20 ("Auth
//!   failure."). Any other command before that, except `VERSION`, is
//!   answered 0x20 and the connection is closed.
//!
//! Passwords are compared in constant time (`subtle`), against every entry
//! of the file. `auth_cmds` counts exchanges that succeeded or failed,
//! `auth_errors` those that failed, as in memcached.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

use bytes::{Buf, BufMut, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::connection::WorkerContext;

/// Which authentication clients must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSettings {
    /// memcached's `-Y FILE`: the text protocol's `set` token, checked
    /// against `user:password` lines.
    Text { file: PathBuf },
    /// memcached's `-S`: binary SASL PLAIN, checked against a password
    /// database of `user:password` lines.
    Sasl { pwdb: PathBuf },
}

impl AuthSettings {
    pub fn file(&self) -> &Path {
        match self {
            AuthSettings::Text { file } => file,
            AuthSettings::Sasl { pwdb } => pwdb,
        }
    }
}

/// `(user, password)` pairs, as read from a password file.
type Users = Vec<(Vec<u8>, Vec<u8>)>;

/// The password file and the counters, shared by every worker.
#[derive(Debug)]
pub struct Auth {
    settings: AuthSettings,
    users: RwLock<Users>,
    cmds: AtomicU64,
    errors: AtomicU64,
}

impl Auth {
    /// Reads the password file; an unreadable or malformed one is an error
    /// naming the file and line.
    pub fn new(settings: AuthSettings) -> Result<Auth, String> {
        let users = load_users(&settings)?;
        Ok(Auth {
            settings,
            users: RwLock::new(users),
            cmds: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Reads the password file again (SIGHUP, as memcached reloads its
    /// auth file); on an error the users stay as they were.
    pub fn reload(&self) -> Result<usize, String> {
        let users = load_users(&self.settings)?;
        let n = users.len();
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        Ok(n)
    }

    /// Whether `user` with `password` is in the file. Every entry is
    /// compared, each in constant time.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0);
        for (u, p) in users.iter() {
            found |= u.as_slice().ct_eq(user) & p.as_slice().ct_eq(password);
        }
        found.into()
    }

    /// memcached's `auth_cmds` and `auth_errors`.
    pub fn counts(&self) -> (u64, u64) {
        (self.cmds.load(Relaxed), self.errors.load(Relaxed))
    }

    pub fn reset_counts(&self) {
        self.cmds.store(0, Relaxed);
        self.errors.store(0, Relaxed);
    }

    fn count(&self, ok: bool) {
        self.cmds.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

/// `user:password` lines. In an auth file (`-Y`) the password is the rest
/// of the line, as memcached reads it; in a SASL password database it ends
/// at the next `:`, as memcached's `MEMCACHED_SASL_PWDB` reader does. Blank
/// lines are skipped.
fn load_users(settings: &AuthSettings) -> Result<Users, String> {
    let path = settings.file();
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "password file {} line {}: expected user:password",
                path.display(),
                n + 1
            ));
        };
        let user = &line[..colon];
        let mut password = &line[colon + 1..];
        if let AuthSettings::Sasl { .. } = settings {
            if let Some(end) = password.iter().position(|&b| b == b':') {
                password = &password[..end];
            }
        }
        if user.is_empty() {
            return Err(format!(
                "password file {} line {}: empty user name",
                path.display(),
                n + 1
            ));
        }
        users.push((user.to_vec(), password.to_vec()));
    }
    if users.is_empty() {
        return Err(format!(
            "password file {}: no user:password line",
            path.display()
        ));
    }
    Ok(users)
}

/// What one step of the exchange decided.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// More bytes are needed.
    More,
    /// Authenticated: what is left in the buffer is ordinary requests.
    Done,
    /// Close the connection (after writing the replies so far).
    Close,
}

/// The text exchange's state.
#[derive(Debug, Default)]
struct TextState {
    /// The data block expected (its length with `\r\n`), once the `set`
    /// line has arrived.
    payload: Option<usize>,
}

/// The binary exchange's state.
#[derive(Debug, Default)]
struct SaslState {
    /// `SASL_AUTH PLAIN` arrived without credentials: `SASL_STEP` may
    /// bring them.
    started: bool,
    /// Bytes of a refused request's body still to drop.
    swallow: usize,
}

/// A line without a newline longer than this closes the connection, as in
/// memcached.
const MAX_LINE: usize = 2048;
/// Largest credentials block (text data block or SASL body) accepted
/// before authentication; a larger one closes the connection.
const MAX_CREDENTIALS: usize = 64 * 1024;
/// The longest SASL mechanism name memcached takes.
const MAX_MECH_LEN: usize = 32;

fn text_step(auth: &Auth, state: &mut TextState, rbuf: &mut BytesMut, out: &mut BytesMut) -> Step {
    loop {
        match state.payload {
            None => {
                if rbuf.len() < 2 {
                    return Step::More;
                }
                let Some(nl) = rbuf.iter().position(|&b| b == b'\n') else {
                    return if rbuf.len() > MAX_LINE {
                        Step::Close
                    } else {
                        Step::More
                    };
                };
                let line = rbuf.split_to(nl + 1);
                let line = &line[..nl];
                let tokens: Vec<&[u8]> = line
                    .split(|&b| b == b' ')
                    .filter(|t| !t.is_empty())
                    .collect();
                let size = match tokens.as_slice() {
                    [b"set", _, _, _, size, ..] => parse_size(size),
                    _ => None,
                };
                match size {
                    Some(size) if size <= MAX_CREDENTIALS => state.payload = Some(size + 2),
                    Some(_) => return Step::Close,
                    None => out.put_slice(b"CLIENT_ERROR unauthenticated\r\n"),
                }
            }
            Some(len) => {
                if rbuf.len() < len {
                    return Step::More;
                }
                state.payload = None;
                let block = rbuf.split_to(len);
                if !block.ends_with(b"\r\n") {
                    out.put_slice(b"CLIENT_ERROR bad command line termination\r\n");
                    continue;
                }
                let text = &block[..len - 2];
                let mut tokens = text.split(|&b| b == b' ').filter(|t| !t.is_empty());
                let (Some(user), Some(password)) = (tokens.next(), tokens.next()) else {
                    out.put_slice(b"CLIENT_ERROR bad authentication token format\r\n");
                    continue;
                };
                let ok = auth.check(user, password);
                auth.count(ok);
                if ok {
                    out.put_slice(b"STORED\r\n");
                    return Step::Done;
                }
                out.put_slice(b"CLIENT_ERROR authentication failure\r\n");
            }
        }
    }
}

/// The length token of the `set` line: digits (a trailing `\r` is
/// ignored, as memcached's `strtoul` ignores it) that fit 32 bits.
fn parse_size(token: &[u8]) -> Option<usize> {
    let token = token.strip_suffix(b"\r").unwrap_or(token);
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token)
        .ok()?
        .parse::<u32>()
        .ok()
        .map(|n| n as usize)
}

mod opcode {
    pub const VERSION: u8 = 0x0b;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
}

mod status {
    pub const OK: u16 = 0x0000;
    pub const EINVAL: u16 = 0x0004;
    pub const AUTH_ERROR: u16 = 0x0020;
    pub const AUTH_CONTINUE: u16 = 0x0021;
}

fn packet(out: &mut BytesMut, opcode: u8, opaque: u32, status: u16, body: &[u8]) {
    out.put_u8(0x81);
    out.put_u8(opcode);
    out.put_u16(0);
    out.put_u8(0);
    out.put_u8(0);
    out.put_u16(status);
    out.put_u32(body.len() as u32);
    out.put_u32(opaque);
    out.put_u64(0);
    out.put_slice(body);
}

fn sasl_step(auth: &Auth, state: &mut SaslState, rbuf: &mut BytesMut, out: &mut BytesMut) -> Step {
    loop {
        if state.swallow > 0 {
            let n = state.swallow.min(rbuf.len());
            rbuf.advance(n);
            state.swallow -= n;
            if state.swallow > 0 {
                return Step::More;
            }
        }
        let Some(&magic) = rbuf.first() else {
            return Step::More;
        };
        if magic != 0x80 {
            // Not binary protocol: memcached closes.
            return Step::Close;
        }
        if rbuf.len() < 24 {
            return Step::More;
        }
        let op = rbuf[1];
        let key_len = usize::from(u16::from_be_bytes([rbuf[2], rbuf[3]]));
        let extras_len = usize::from(rbuf[4]);
        let body_len = u32::from_be_bytes([rbuf[8], rbuf[9], rbuf[10], rbuf[11]]) as usize;
        let opaque = u32::from_be_bytes([rbuf[12], rbuf[13], rbuf[14], rbuf[15]]);
        let error = |out: &mut BytesMut, status: u16| {
            let message: &[u8] = match status {
                status::AUTH_ERROR => b"Auth failure.",
                _ => b"Invalid arguments",
            };
            packet(out, op, opaque, status, message);
        };
        if !matches!(
            op,
            opcode::SASL_LIST_MECHS | opcode::SASL_AUTH | opcode::SASL_STEP | opcode::VERSION
        ) {
            // Anything else needs authentication first: refused, and the
            // connection closes, as in memcached.
            error(out, status::AUTH_ERROR);
            return Step::Close;
        }
        if key_len + extras_len > body_len || body_len > MAX_CREDENTIALS {
            error(out, status::EINVAL);
            return Step::Close;
        }
        if rbuf.len() < 24 + body_len {
            return Step::More;
        }
        rbuf.advance(24);
        let body = rbuf.split_to(body_len);
        let (key, value) = body[extras_len..].split_at(key_len);
        match op {
            opcode::VERSION | opcode::SASL_LIST_MECHS => {
                if body_len != 0 {
                    error(out, status::EINVAL);
                    return Step::Close;
                }
                let answer: &[u8] = if op == opcode::VERSION {
                    crate::admin::VERSION.as_bytes()
                } else {
                    b"PLAIN"
                };
                packet(out, op, opaque, status::OK, answer);
            }
            _ => {
                if extras_len != 0 || key_len == 0 {
                    error(out, status::EINVAL);
                    return Step::Close;
                }
                if key_len > MAX_MECH_LEN {
                    // memcached answers "invalid" and reads on.
                    error(out, status::EINVAL);
                    continue;
                }
                let plain = key == b"PLAIN";
                let verdict = if op == opcode::SASL_AUTH && plain && value.is_empty() {
                    state.started = true;
                    packet(out, op, opaque, status::AUTH_CONTINUE, &[]);
                    continue;
                } else if op == opcode::SASL_STEP && !state.started {
                    false
                } else {
                    plain && check_plain(auth, value)
                };
                state.started = false;
                auth.count(verdict);
                if verdict {
                    packet(out, op, opaque, status::OK, b"Authenticated");
                    return Step::Done;
                }
                error(out, status::AUTH_ERROR);
            }
        }
    }
}

/// A PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`. An
/// authorization identity other than the user's own is refused.
fn check_plain(auth: &Auth, message: &[u8]) -> bool {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    (authzid.is_empty() || authzid == user) && auth.check(user, password)
}

/// Runs the authentication exchange on a new connection. True once the
/// client is authenticated (what it sent after that is left in `rbuf`);
/// false when the connection must close (it broke the exchange, left, went
/// idle past `-o idle_timeout`, or the server is shutting down).
pub(crate) async fn authenticate<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    ctx: &WorkerContext,
    auth: &Auth,
    shutdown: &mut watch::Receiver<bool>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut text = TextState::default();
    let mut sasl = SaslState::default();
    let mut out = BytesMut::new();
    let idle = ctx.idle_timeout;
    let mut deadline = idle.map(|t| tokio::time::Instant::now() + t);
    loop {
        let before = rbuf.len();
        let step = match auth.settings() {
            AuthSettings::Text { .. } => text_step(auth, &mut text, rbuf, &mut out),
            AuthSettings::Sasl { .. } => sasl_step(auth, &mut sasl, rbuf, &mut out),
        };
        if rbuf.len() != before {
            // A request arrived: the idle clock starts again.
            deadline = idle.map(|t| tokio::time::Instant::now() + t);
        }
        if !out.is_empty() {
            ctx.stats().bytes_written.add(out.len() as u64);
            let written = stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok();
            out.clear();
            if !written {
                return false;
            }
        }
        match step {
            Step::Done => return true,
            Step::Close => {
                let _ = stream.shutdown().await;
                return false;
            }
            Step::More => {}
        }
        if *shutdown.borrow() {
            let _ = stream.shutdown().await;
            return false;
        }
        rbuf.reserve(4096);
        let idle_timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read_buf(rbuf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => ctx.stats().bytes_read.add(n as u64),
            },
            _ = shutdown.changed() => {}
            _ = idle_timer => {
                ctx.stats().idle_kicks.incr();
                let _ = stream.shutdown().await;
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(settings: fn(PathBuf) -> AuthSettings, content: &str) -> Auth {
        let dir = std::env::temp_dir().join(format!(
            "memroute-auth-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        std::fs::write(&path, content).unwrap();
        let auth = Auth::new(settings(path)).unwrap();
        // Read once (these tests never reload): nothing is left in /tmp.
        std::fs::remove_dir_all(&dir).unwrap();
        auth
    }

    fn text(auth: &Auth, input: &[u8]) -> (Vec<u8>, Step, Vec<u8>) {
        let mut state = TextState::default();
        let mut rbuf = BytesMut::from(input);
        let mut out = BytesMut::new();
        let step = text_step(auth, &mut state, &mut rbuf, &mut out);
        (out.to_vec(), step, rbuf.to_vec())
    }

    #[test]
    fn text_exchange_follows_memcached() {
        let a = auth(
            |file| AuthSettings::Text { file },
            "foo:bar\nbaaaz:qu:ux\r\n",
        );
        let (out, step, _) = text(&a, b"get foo\r\nset foo 0 0 2\r\nhi\r\n");
        assert_eq!(
            out,
            b"CLIENT_ERROR unauthenticated\r\nCLIENT_ERROR bad authentication token format\r\n"
        );
        assert_eq!(step, Step::More);
        let (out, step, _) = text(&a, b"set foo 0 0 7\r\nfoo bab\r\n");
        assert_eq!(out, b"CLIENT_ERROR authentication failure\r\n");
        assert_eq!(step, Step::More);
        let (out, step, rest) = text(&a, b"set x 0 0 11\r\nbaaaz qu:ux\r\nget k\r\n");
        assert_eq!((out.as_slice(), step), (&b"STORED\r\n"[..], Step::Done));
        assert_eq!(rest, b"get k\r\n");
        let (out, _, _) = text(&a, b"set x 0 0 3\r\nabcde\r\n");
        assert_eq!(
            out,
            b"CLIENT_ERROR bad command line termination\r\nCLIENT_ERROR unauthenticated\r\n"
        );
        assert_eq!(text(&a, &[b'x'; 3000]).1, Step::Close);
        assert_eq!(a.counts(), (2, 1));
    }

    fn request(op: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(0x80);
        b.put_u8(op);
        b.put_u16(key.len() as u16);
        b.put_u8(0);
        b.put_u8(0);
        b.put_u16(0);
        b.put_u32((key.len() + value.len()) as u32);
        b.put_u32(7);
        b.put_u64(0);
        b.put_slice(key);
        b.put_slice(value);
        b.to_vec()
    }

    fn statuses(mut out: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut v = Vec::new();
        while out.len() >= 24 {
            let len = u32::from_be_bytes(out[8..12].try_into().unwrap()) as usize;
            v.push((
                u16::from_be_bytes([out[6], out[7]]),
                out[24..24 + len].to_vec(),
            ));
            out = &out[24 + len..];
        }
        v
    }

    #[test]
    fn sasl_plain() {
        let a = auth(
            |pwdb| AuthSettings::Sasl { pwdb },
            "testuser:testpass:extra\n",
        );
        let run = |input: Vec<u8>| {
            let mut state = SaslState::default();
            let mut rbuf = BytesMut::from(&input[..]);
            let mut out = BytesMut::new();
            let step = sasl_step(&a, &mut state, &mut rbuf, &mut out);
            (statuses(&out), step)
        };
        let mut input = request(opcode::SASL_LIST_MECHS, b"", b"");
        input.extend(request(opcode::SASL_AUTH, b"PLAIN", b"\0testuser\0wrong"));
        input.extend(request(
            opcode::SASL_AUTH,
            &[b'X'; 40],
            b"\0testuser\0testpass",
        ));
        input.extend(request(
            opcode::SASL_STEP,
            b"PLAIN",
            b"\0testuser\0testpass",
        ));
        input.extend(request(opcode::SASL_AUTH, b"PLAIN", b""));
        input.extend(request(
            opcode::SASL_STEP,
            b"PLAIN",
            b"\0testuser\0testpass",
        ));
        let (replies, step) = run(input);
        assert_eq!(step, Step::Done);
        assert_eq!(
            replies,
            vec![
                (0, b"PLAIN".to_vec()),
                (0x20, b"Auth failure.".to_vec()),
                (0x04, b"Invalid arguments".to_vec()),
                (0x20, b"Auth failure.".to_vec()),
                (0x21, vec![]),
                (0, b"Authenticated".to_vec()),
            ]
        );
        // A get before authenticating: refused, and the connection closes.
        let (replies, step) = run(request(0x00, b"k", b""));
        assert_eq!((replies[0].0, step), (0x20, Step::Close));
        assert_eq!(a.counts(), (3, 2));
    }
}
