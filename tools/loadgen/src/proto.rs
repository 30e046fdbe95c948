//! The memcached text protocol as the load generator speaks it: keys and
//! values it makes, the requests it sends (`set`, `get`, multi-key `get`)
//! and a strict parser of the replies.
//!
//! The parser is sans-IO: it looks at the bytes read so far and says either
//! "incomplete, read more", "one reply of N bytes, with this outcome", or
//! "this is not a valid reply" (the connection is then unusable). A VALUE
//! block is taken by its announced length, so a short or overlong block,
//! a key that was not asked for or a missing `END` is a protocol error, never
//! a wait for bytes that will not come.

/// Longest line (VALUE header, error text) accepted before the reply is
/// declared garbage.
pub const MAX_LINE: usize = 4096;
/// Largest VALUE block accepted (memcached's item size limit is 1 MiB by
/// default, at most 1 GiB).
pub const MAX_VALUE: usize = 1 << 30;

const ALPHABET: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";

/// Kinds of operation, and the index of their histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get = 0,
    Set = 1,
    MGet = 2,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Get, OpKind::Set, OpKind::MGet];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Set => "set",
            OpKind::MGet => "mget",
        }
    }
}

/// One request: the key indexes it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Set(u32),
    Get(u32),
    /// Distinct keys, in the order they are sent.
    MGet(Vec<u32>),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Set(_) => OpKind::Set,
            Op::Get(_) => OpKind::Get,
            Op::MGet(_) => OpKind::MGet,
        }
    }

    fn keys(&self) -> &[u32] {
        match self {
            Op::Set(k) | Op::Get(k) => std::slice::from_ref(k),
            Op::MGet(ks) => ks,
        }
    }
}

/// Keys and values of a run. Key `i` is the prefix followed by `i` in
/// decimal, zero-padded to `key_size` bytes. The value of key `i` is `i` in
/// decimal, a colon, then letters that depend on `i`, cut or padded to
/// `value_size` bytes: a reply carrying another key's value is detected.
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: Vec<u8>,
    key_size: usize,
    keys: u32,
    value_size: usize,
    /// The alphabet repeated to `value_size + 26` bytes.
    filler: Vec<u8>,
}

impl KeySpace {
    pub fn new(
        prefix: &str,
        key_size: usize,
        keys: u32,
        value_size: usize,
    ) -> Result<Self, String> {
        if keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("--key-prefix must not contain spaces or control characters".into());
        }
        let digits = (keys - 1).to_string().len();
        let need = prefix.len() + digits;
        if key_size < need {
            return Err(format!(
                "--key-size {key_size} is too small for {keys} keys with prefix {prefix:?} (needs {need})"
            ));
        }
        if key_size > 250 {
            return Err("--key-size must be at most 250 (memcached's limit)".into());
        }
        let filler = ALPHABET
            .iter()
            .copied()
            .cycle()
            .take(value_size + 26)
            .collect();
        Ok(KeySpace {
            prefix: prefix.as_bytes().to_vec(),
            key_size,
            keys,
            value_size,
            filler,
        })
    }

    pub fn keys(&self) -> u32 {
        self.keys
    }

    #[cfg(test)]
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    pub fn write_key(&self, idx: u32, out: &mut Vec<u8>) {
        let mut digits = [0u8; 10];
        let d = decimal(idx, &mut digits);
        out.extend_from_slice(&self.prefix);
        let pad = self.key_size - self.prefix.len() - d.len();
        out.resize(out.len() + pad, b'0');
        out.extend_from_slice(d);
    }

    /// The index of a key this key space made, or None.
    pub fn parse_key(&self, key: &[u8]) -> Option<u32> {
        if key.len() != self.key_size || !key.starts_with(&self.prefix) {
            return None;
        }
        let digits = &key[self.prefix.len()..];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut v: u64 = 0;
        for &b in digits {
            v = v * 10 + u64::from(b - b'0');
            if v >= u64::from(self.keys) {
                return None;
            }
        }
        Some(v as u32)
    }

    pub fn write_value(&self, idx: u32, out: &mut Vec<u8>) {
        let mut digits = [0u8; 10];
        let d = decimal(idx, &mut digits);
        let head = d.len() + 1;
        if self.value_size <= head {
            let mut h = d.to_vec();
            h.push(b':');
            out.extend_from_slice(&h[..self.value_size]);
            return;
        }
        out.extend_from_slice(d);
        out.push(b':');
        out.extend_from_slice(self.tail(idx, head));
    }

    fn tail(&self, idx: u32, head: usize) -> &[u8] {
        let start = (idx as usize + head) % 26;
        &self.filler[start..start + self.value_size - head]
    }

    /// Whether `data` is exactly the value of key `idx`.
    pub fn value_matches(&self, idx: u32, data: &[u8]) -> bool {
        if data.len() != self.value_size {
            return false;
        }
        let mut digits = [0u8; 10];
        let d = decimal(idx, &mut digits);
        let head = d.len() + 1;
        if self.value_size <= head {
            let mut h = d.to_vec();
            h.push(b':');
            return data == &h[..self.value_size];
        }
        data[..d.len()] == *d && data[d.len()] == b':' && data[head..] == *self.tail(idx, head)
    }

    /// Appends the request line(s) of `op`.
    pub fn write_request(&self, op: &Op, out: &mut Vec<u8>) {
        match op {
            Op::Set(k) => {
                out.extend_from_slice(b"set ");
                self.write_key(*k, out);
                out.extend_from_slice(format!(" 0 0 {}\r\n", self.value_size).as_bytes());
                self.write_value(*k, out);
                out.extend_from_slice(b"\r\n");
            }
            Op::Get(_) | Op::MGet(_) => {
                out.extend_from_slice(b"get");
                for k in op.keys() {
                    out.push(b' ');
                    self.write_key(*k, out);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn decimal(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// An error reply from the server: the stream is still in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReply {
    /// `SERVER_ERROR ...`
    Server,
    /// `CLIENT_ERROR ...`
    Client,
    /// `ERROR`
    Error,
    /// A valid reply of the wrong kind for the request (`NOT_STORED`,
    /// `EXISTS`, `NOT_FOUND` to a `set`).
    Unexpected,
}

/// What one well-formed reply said.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Set when the reply was an error line.
    pub error: Option<ErrorReply>,
    /// Keys returned (gets).
    pub hits: u32,
    /// Keys asked for and not returned (gets).
    pub misses: u32,
    /// Values returned whose length or content is not the key's value.
    pub wrong_values: u32,
}

/// The bytes cannot be a reply to the request: the connection is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line ending in CRLF at the start of `buf`: Ok(None) when the line is
/// not complete yet.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let limit = buf.len().min(MAX_LINE);
    match buf[..limit].iter().position(|&b| b == b'\n') {
        Some(nl) => {
            if nl == 0 || buf[nl - 1] != b'\r' {
                return Err(ProtocolError(format!(
                    "line not ended by CRLF: {:?}",
                    show(&buf[..nl + 1])
                )));
            }
            Ok(Some((&buf[..nl - 1], nl + 1)))
        }
        None if buf.len() >= MAX_LINE => Err(ProtocolError(format!(
            "no line end in {MAX_LINE} bytes: {:?}",
            show(&buf[..64])
        ))),
        None => Ok(None),
    }
}

/// Printable excerpt of bad bytes for error messages.
pub fn show(b: &[u8]) -> String {
    let b = &b[..b.len().min(80)];
    String::from_utf8_lossy(b).escape_debug().to_string()
}

fn error_line(l: &[u8]) -> Option<ErrorReply> {
    if l.starts_with(b"SERVER_ERROR") {
        Some(ErrorReply::Server)
    } else if l.starts_with(b"CLIENT_ERROR") {
        Some(ErrorReply::Client)
    } else if l == b"ERROR" {
        Some(ErrorReply::Error)
    } else {
        None
    }
}

/// Parses the reply to `op` at the start of `buf`. Ok(None): more bytes
/// are needed. Ok(Some((outcome, consumed))): one whole reply. With
/// `verify`, each returned value is checked against the key's value.
pub fn parse_reply(
    buf: &[u8],
    op: &Op,
    ks: &KeySpace,
    verify: bool,
) -> Result<Option<(Outcome, usize)>, ProtocolError> {
    match op {
        Op::Set(_) => {
            let Some((l, n)) = line(buf)? else {
                return Ok(None);
            };
            let error = if l == b"STORED" {
                None
            } else if let Some(e) = error_line(l) {
                Some(e)
            } else if l == b"NOT_STORED" || l == b"EXISTS" || l == b"NOT_FOUND" {
                Some(ErrorReply::Unexpected)
            } else {
                return Err(ProtocolError(format!("bad reply to set: {:?}", show(l))));
            };
            Ok(Some((
                Outcome {
                    error,
                    ..Outcome::default()
                },
                n,
            )))
        }
        Op::Get(_) | Op::MGet(_) => parse_values(buf, op.keys(), ks, verify),
    }
}

fn parse_values(
    buf: &[u8],
    keys: &[u32],
    ks: &KeySpace,
    verify: bool,
) -> Result<Option<(Outcome, usize)>, ProtocolError> {
    let mut pos = 0;
    let mut next_key = 0; // index into `keys` of the next key that may come
    let mut out = Outcome::default();
    loop {
        let Some((l, n)) = line(&buf[pos..])? else {
            return Ok(None);
        };
        if l == b"END" {
            out.misses = keys.len() as u32 - out.hits;
            return Ok(Some((out, pos + n)));
        }
        if pos == 0 {
            if let Some(e) = error_line(l) {
                out.error = Some(e);
                return Ok(Some((out, n)));
            }
        }
        let Some(rest) = l.strip_prefix(b"VALUE ") else {
            return Err(ProtocolError(format!(
                "bad line in get reply: {:?}",
                show(l)
            )));
        };
        let mut fields = rest.split(|&b| b == b' ');
        let (Some(key), Some(flags), Some(len)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(ProtocolError(format!("short VALUE line: {:?}", show(l))));
        };
        let cas = fields.next();
        if fields.next().is_some()
            || !is_number(flags)
            || cas.is_some_and(|c| !is_number(c))
            || !is_number(len)
        {
            return Err(ProtocolError(format!("bad VALUE line: {:?}", show(l))));
        }
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&v| v <= MAX_VALUE)
            .ok_or_else(|| ProtocolError(format!("bad VALUE length: {:?}", show(l))))?;
        let idx = ks.parse_key(key);
        // Hits come in the order the keys were asked, misses left out.
        match keys[next_key..].iter().position(|&k| Some(k) == idx) {
            Some(i) => next_key += i + 1,
            None => {
                return Err(ProtocolError(format!(
                    "VALUE for a key not asked for (or out of order): {:?}",
                    show(key)
                )))
            }
        }
        let data_start = pos + n;
        let data_end = data_start + len;
        if buf.len() < data_end + 2 {
            return Ok(None);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(ProtocolError(format!(
                "VALUE block of {len} bytes not followed by CRLF (key {:?})",
                show(key)
            )));
        }
        out.hits += 1;
        let data = &buf[data_start..data_end];
        let ok = if verify {
            ks.value_matches(keys[next_key - 1], data)
        } else {
            true
        };
        if !ok {
            out.wrong_values += 1;
        }
        pos = data_end + 2;
    }
}

fn is_number(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 20 && b.iter().all(u8::is_ascii_digit)
}

/// A small, fast, seedable PRNG (splitmix64): no dependency, same sequence
/// on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the operations of the measured phase.
#[derive(Clone, Debug)]
pub struct Mix {
    pub set_ratio: f64,
    /// Keys per get: 1 is a plain `get`, more a multi-key `get`.
    pub mget: u32,
    pub keys: u32,
}

impl Mix {
    pub fn next(&self, rng: &mut Rng) -> Op {
        if rng.unit() < self.set_ratio {
            return Op::Set(rng.below(self.keys));
        }
        if self.mget <= 1 {
            return Op::Get(rng.below(self.keys));
        }
        let k = self.mget.min(self.keys) as usize;
        let mut v = Vec::with_capacity(k);
        if u64::from(self.keys) >= 2 * k as u64 {
            // Distinct random keys (rejection: at most half are taken).
            while v.len() < k {
                let c = rng.below(self.keys);
                if !v.contains(&c) {
                    v.push(c);
                }
            }
        } else {
            let start = rng.below(self.keys);
            v.extend((0..k as u32).map(|i| (start + i) % self.keys));
        }
        Op::MGet(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> KeySpace {
        KeySpace::new("lg:", 16, 1000, 20).unwrap()
    }

    fn key(i: u32) -> Vec<u8> {
        let mut v = Vec::new();
        ks().write_key(i, &mut v);
        v
    }

    fn value_block(i: u32) -> Vec<u8> {
        let ks = ks();
        let mut v = b"VALUE ".to_vec();
        ks.write_key(i, &mut v);
        v.extend_from_slice(format!(" 0 {}\r\n", ks.value_size()).as_bytes());
        ks.write_value(i, &mut v);
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn keys_round_trip_and_are_padded() {
        let ks = ks();
        assert_eq!(key(7), b"lg:0000000000007");
        assert_eq!(key(999).len(), 16);
        assert_eq!(ks.parse_key(&key(999)), Some(999));
        assert_eq!(
            ks.parse_key(b"lg:0000000001000"),
            None,
            "outside the key space"
        );
        assert_eq!(ks.parse_key(b"xx:0000000000007"), None);
        assert_eq!(ks.parse_key(b"lg:000000000007"), None, "wrong length");
        assert!(KeySpace::new("lg:", 4, 1000, 10).is_err());
        assert!(KeySpace::new("l g", 16, 10, 10).is_err());
    }

    #[test]
    fn values_have_the_size_and_depend_on_the_key() {
        let ks = ks();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ks.write_value(12, &mut a);
        ks.write_value(13, &mut b);
        assert_eq!(a.len(), 20);
        assert!(a.starts_with(b"12:"));
        assert!(ks.value_matches(12, &a));
        assert!(!ks.value_matches(13, &a));
        assert!(!ks.value_matches(12, &b));
        assert!(!ks.value_matches(12, &a[..19]));
        let tiny = KeySpace::new("k", 8, 1000, 2).unwrap();
        let mut t = Vec::new();
        tiny.write_value(123, &mut t);
        assert_eq!(t, b"12");
        assert!(tiny.value_matches(123, &t));
    }

    #[test]
    fn requests() {
        let ks = KeySpace::new("k", 4, 100, 5).unwrap();
        let mut out = Vec::new();
        ks.write_request(&Op::Set(3), &mut out);
        ks.write_request(&Op::Get(42), &mut out);
        ks.write_request(&Op::MGet(vec![1, 2]), &mut out);
        assert_eq!(
            out,
            b"set k003 0 0 5\r\n3:fgh\r\nget k042\r\nget k001 k002\r\n".to_vec()
        );
    }

    #[test]
    fn set_replies() {
        let ks = ks();
        let op = Op::Set(1);
        let p = |b: &[u8]| parse_reply(b, &op, &ks, true);
        assert_eq!(p(b"STORED\r\n"), Ok(Some((Outcome::default(), 8))));
        assert_eq!(p(b"STORED\r\nSTORED\r\n").unwrap().unwrap().1, 8);
        assert_eq!(p(b"STOR"), Ok(None));
        assert_eq!(p(b"STORED\r"), Ok(None));
        let e = p(b"SERVER_ERROR out of memory\r\n").unwrap().unwrap().0;
        assert_eq!(e.error, Some(ErrorReply::Server));
        let e = p(b"CLIENT_ERROR bad data chunk\r\n").unwrap().unwrap().0;
        assert_eq!(e.error, Some(ErrorReply::Client));
        assert_eq!(
            p(b"ERROR\r\n").unwrap().unwrap().0.error,
            Some(ErrorReply::Error)
        );
        let e = p(b"NOT_STORED\r\n").unwrap().unwrap().0;
        assert_eq!(e.error, Some(ErrorReply::Unexpected));
        assert!(p(b"HELLO\r\n").is_err());
        assert!(p(b"STORED\n").is_err(), "bare LF");
        assert!(p(&[b'x'; MAX_LINE]).is_err(), "endless line");
    }

    #[test]
    fn get_replies() {
        let ks = ks();
        let op = Op::Get(5);
        let mut r = value_block(5);
        r.extend_from_slice(b"END\r\n");
        let (o, n) = parse_reply(&r, &op, &ks, true).unwrap().unwrap();
        assert_eq!((o.hits, o.misses, o.wrong_values, o.error), (1, 0, 0, None));
        assert_eq!(n, r.len());
        // Every truncation is "incomplete", never an answer or an error.
        for cut in 0..r.len() {
            assert_eq!(
                parse_reply(&r[..cut], &op, &ks, true),
                Ok(None),
                "cut at {cut}"
            );
        }
        let (o, n) = parse_reply(b"END\r\n", &op, &ks, true).unwrap().unwrap();
        assert_eq!((o.hits, o.misses, n), (0, 1, 5));
        let e = parse_reply(b"SERVER_ERROR busy\r\n", &op, &ks, true)
            .unwrap()
            .unwrap();
        assert_eq!(e.0.error, Some(ErrorReply::Server));
        // With a CAS field (gets) too.
        let mut c = b"VALUE ".to_vec();
        ks.write_key(5, &mut c);
        c.extend_from_slice(b" 0 20 99\r\n");
        ks.write_value(5, &mut c);
        c.extend_from_slice(b"\r\nEND\r\n");
        assert_eq!(parse_reply(&c, &op, &ks, true).unwrap().unwrap().0.hits, 1);
    }

    #[test]
    fn wrong_or_truncated_values_are_errors() {
        let ks = ks();
        let op = Op::Get(5);
        // Another key's value under the right key: counted as wrong.
        let mut r = b"VALUE ".to_vec();
        ks.write_key(5, &mut r);
        r.extend_from_slice(b" 0 20\r\n");
        ks.write_value(6, &mut r);
        r.extend_from_slice(b"\r\nEND\r\n");
        let o = parse_reply(&r, &op, &ks, true).unwrap().unwrap().0;
        assert_eq!(o.wrong_values, 1);
        assert_eq!(
            parse_reply(&r, &op, &ks, false)
                .unwrap()
                .unwrap()
                .0
                .wrong_values,
            0
        );
        // A block shorter than announced: no CRLF where it must be.
        let mut r = b"VALUE ".to_vec();
        ks.write_key(5, &mut r);
        r.extend_from_slice(b" 0 23\r\n");
        ks.write_value(5, &mut r);
        r.extend_from_slice(b"\r\nEND\r\n0123456789");
        assert!(parse_reply(&r, &op, &ks, true).is_err());
        // A key that was not asked for.
        let r = [value_block(6), b"END\r\n".to_vec()].concat();
        assert!(parse_reply(&r, &op, &ks, true).is_err());
        // Garbage lines.
        assert!(parse_reply(b"VALUE x\r\n", &op, &ks, true).is_err());
        assert!(parse_reply(b"STORED\r\n", &op, &ks, true).is_err());
        let mut r = b"VALUE ".to_vec();
        ks.write_key(5, &mut r);
        r.extend_from_slice(b" 0 -1\r\n");
        assert!(parse_reply(&r, &op, &ks, true).is_err());
    }

    #[test]
    fn multi_get_replies() {
        let ks = ks();
        let op = Op::MGet(vec![3, 9, 4]);
        let r = [value_block(3), value_block(4), b"END\r\n".to_vec()].concat();
        let (o, n) = parse_reply(&r, &op, &ks, true).unwrap().unwrap();
        assert_eq!((o.hits, o.misses, n), (2, 1, r.len()));
        // Out of order is an error.
        let r = [value_block(4), value_block(3), b"END\r\n".to_vec()].concat();
        assert!(parse_reply(&r, &op, &ks, true).is_err());
        // A hit repeated is an error.
        let r = [value_block(3), value_block(3), b"END\r\n".to_vec()].concat();
        assert!(parse_reply(&r, &op, &ks, true).is_err());
        // Two replies back to back: the first is taken alone.
        let one = [value_block(9), b"END\r\n".to_vec()].concat();
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(
            parse_reply(&two, &op, &ks, true).unwrap().unwrap().1,
            one.len()
        );
    }

    #[test]
    fn mix_picks_distinct_keys_and_the_ratio() {
        let mut rng = Rng::new(1);
        let mix = Mix {
            set_ratio: 0.25,
            mget: 10,
            keys: 30,
        };
        let mut sets = 0;
        for _ in 0..4000 {
            match mix.next(&mut rng) {
                Op::Set(k) => {
                    assert!(k < 30);
                    sets += 1
                }
                Op::MGet(ks) => {
                    assert_eq!(ks.len(), 10);
                    let mut s = ks.clone();
                    s.sort();
                    s.dedup();
                    assert_eq!(s.len(), 10);
                }
                Op::Get(_) => panic!("mget 10 makes no single gets"),
            }
        }
        assert!((900..1100).contains(&sets), "{sets} sets of 4000");
        let few = Mix {
            set_ratio: 0.0,
            mget: 8,
            keys: 10,
        };
        let Op::MGet(ks) = few.next(&mut rng) else {
            panic!()
        };
        assert_eq!(ks.len(), 8);
    }
}
