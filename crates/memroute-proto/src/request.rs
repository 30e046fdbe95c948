//! The typed form of a client request.
//!
//! A [`Request`] keeps the raw command line and data block it was decoded
//! from (both zero-copy [`Bytes`] slices of the connection's read buffer), so
//! a proxy can forward it byte for byte, plus the parsed [`Command`] that the
//! embedded cache executes. Keys are slices of the same buffer.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::meta::MetaFlags;

/// One decoded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub(crate) line: Bytes,
    pub(crate) value: Bytes,
    pub(crate) command: Command,
}

impl Request {
    /// Builds a request from its parts. The decoder is the usual source;
    /// this exists for tests and for routes that synthesise requests.
    pub fn new(line: Bytes, value: Bytes, command: Command) -> Self {
        Request {
            line,
            value,
            command,
        }
    }

    /// What the client asked for.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// The command line as received, without its `\r\n` (or `\n`).
    pub fn raw_line(&self) -> &Bytes {
        &self.line
    }

    /// The data block of a storage command, without its trailing `\r\n`.
    /// Empty for commands without one.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// Whether the client asked for no reply (`noreply`, or meta `q`, which
    /// hides only nominal replies; see [`MetaFlags::quiet`]).
    pub fn noreply(&self) -> bool {
        match &self.command {
            Command::Store(s) => s.noreply,
            Command::Arith(a) => a.noreply,
            Command::Delete { noreply, .. }
            | Command::Touch { noreply, .. }
            | Command::FlushAll { noreply, .. }
            | Command::Verbosity { noreply } => *noreply,
            _ => false,
        }
    }

    /// The first key of the request, if it has one.
    pub fn key(&self) -> Option<&Bytes> {
        match &self.command {
            Command::Get(g) => g.keys.first(),
            Command::Store(s) => Some(&s.key),
            Command::Arith(a) => Some(&a.key),
            Command::Delete { key, .. } | Command::Touch { key, .. } => Some(key),
            Command::Meta(m) => Some(&m.key),
            _ => None,
        }
    }

    /// Writes the request as a client sends it: line, `\r\n`, and for
    /// storage commands the data block and `\r\n`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.line.len() + self.value.len() + 4);
        out.put_slice(&self.line);
        out.put_slice(b"\r\n");
        if self.has_data_block() {
            out.put_slice(&self.value);
            out.put_slice(b"\r\n");
        }
    }

    /// Builds a request from its wire form (`line` without `\r\n`, and
    /// the data block for storage commands), as `mcp.request` does.
    pub fn parse(
        line: &[u8],
        value: &[u8],
        limits: &crate::Limits,
    ) -> Result<Request, &'static str> {
        let mut wire = BytesMut::with_capacity(line.len() + value.len() + 4);
        wire.put_slice(line);
        wire.put_slice(b"\r\n");
        let mut decoder = crate::RequestDecoder::new(limits.clone());
        let first = decoder.decode(&mut wire);
        let needs_value = first.is_none() && decoder.is_mid_request();
        let decoded = if needs_value {
            wire.put_slice(value);
            wire.put_slice(b"\r\n");
            decoder.decode(&mut wire)
        } else {
            first
        };
        match decoded {
            Some(crate::Decoded::Request(r)) if wire.is_empty() => Ok(r),
            Some(crate::Decoded::Request(_)) => Err("CLIENT_ERROR trailing bytes after request"),
            Some(crate::Decoded::Error(e)) => {
                Err(e.reply_line().unwrap_or("CLIENT_ERROR bad request"))
            }
            None => Err("CLIENT_ERROR incomplete request"),
        }
    }

    /// Whether the client wants no reply: `noreply`, or meta `q` (which
    /// hides only nominal replies).
    pub fn is_quiet(&self) -> bool {
        match &self.command {
            Command::Meta(m) => m.flags.quiet(),
            _ => self.noreply(),
        }
    }

    /// The same request with `noreply` (or the meta `q` flag) removed, for
    /// forwarding to a backend that must answer so replies stay in step.
    /// `None` when there is nothing to remove.
    pub fn without_noreply(&self) -> Option<Request> {
        if !self.is_quiet() {
            return None;
        }
        let line: &[u8] = &self.line;
        let tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
        let mut kept = BytesMut::with_capacity(line.len());
        let mut removed = false;
        let meta = matches!(self.command, Command::Meta(_));
        let count = tokens.clone().count();
        for (i, token) in tokens.enumerate() {
            let drop = if meta {
                i >= 2 && token == b"q"
            } else {
                i + 1 == count && token == b"noreply" && self.noreply()
            };
            if drop {
                removed = true;
                continue;
            }
            if !kept.is_empty() {
                kept.put_slice(b" ");
            }
            kept.put_slice(token);
        }
        if !removed {
            return None;
        }
        Request::parse(
            &kept,
            &self.value,
            &crate::Limits {
                max_key_len: usize::MAX,
                max_item_size: usize::MAX,
                ..crate::Limits::default()
            },
        )
        .ok()
    }

    /// Whether this request carries a data block on the wire.
    pub fn has_data_block(&self) -> bool {
        match &self.command {
            Command::Store(_) => true,
            Command::Meta(m) => m.op == MetaOp::Set,
            _ => false,
        }
    }
}

/// Every command of the text and meta protocols, with its parsed arguments.
// Meta commands carry their parsed flags inline: boxing them would cost an
// allocation per request on the meta hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get`, `gets`, `gat`, `gats`.
    Get(GetCommand),
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store(StoreCommand),
    /// `delete <key> [0] [noreply]`.
    Delete { key: Bytes, noreply: bool },
    /// `incr`, `decr`.
    Arith(ArithCommand),
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        key: Bytes,
        exptime: i32,
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`; `delay` is 0 when absent.
    FlushAll { delay: i32, noreply: bool },
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]`.
    Verbosity { noreply: bool },
    /// `stats [group...]`; `args` is the rest of the line after `stats`,
    /// trimmed (empty for plain `stats`).
    Stats { args: Bytes },
    /// `watch [stream...]`: the connection turns into a log stream (see
    /// memroute-runtime's `watch`); `args` is the rest of the line, trimmed.
    Watch { args: Bytes },
    /// `quit`: close the connection after earlier replies are sent.
    Quit,
    /// `mg`, `ms`, `md`, `ma`, `me`. Boxed: its flags are large, and every
    /// request (of any command) is as big as the largest variant.
    Meta(Box<MetaCommand>),
    /// `mn`: a no-op that answers `MN`, used to mark the end of a pipeline.
    MetaNoop,
}

impl Command {
    /// The name of the command as it appears on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get(g) => g.op.name(),
            Command::Store(s) => s.op.name(),
            Command::Delete { .. } => "delete",
            Command::Arith(a) => match a.op {
                ArithOp::Incr => "incr",
                ArithOp::Decr => "decr",
            },
            Command::Touch { .. } => "touch",
            Command::FlushAll { .. } => "flush_all",
            Command::Version => "version",
            Command::Verbosity { .. } => "verbosity",
            Command::Stats { .. } => "stats",
            Command::Watch { .. } => "watch",
            Command::Quit => "quit",
            Command::Meta(m) => m.op.name(),
            Command::MetaNoop => "mn",
        }
    }
}

/// The retrieval commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOp {
    Get,
    Gets,
    Gat,
    Gats,
}

impl GetOp {
    pub fn name(self) -> &'static str {
        match self {
            GetOp::Get => "get",
            GetOp::Gets => "gets",
            GetOp::Gat => "gat",
            GetOp::Gats => "gats",
        }
    }
    /// Whether hits carry the CAS unique (`gets`, `gats`).
    pub fn returns_cas(self) -> bool {
        matches!(self, GetOp::Gets | GetOp::Gats)
    }
    /// Whether the command also updates the expiry (`gat`, `gats`).
    pub fn touches(self) -> bool {
        matches!(self, GetOp::Gat | GetOp::Gats)
    }
}

/// Keys of a retrieval command; one key is the common case and needs no
/// heap allocation. Room for one key only, not two: every request is as
/// big as its largest command, and a second inline key made a request
/// 144 bytes, past what a move copies inline (128), so each of the
/// several moves of every request was a `memcpy` call
/// (docs/benchmarks.md, run 27).
pub type Keys = SmallVec<[Bytes; 1]>;

/// `get`/`gets`/`gat`/`gats` and their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetCommand {
    pub op: GetOp,
    /// New expiry for `gat`/`gats`; 0 otherwise.
    pub exptime: i32,
    pub keys: Keys,
}

/// The storage commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

impl StoreOp {
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Set => "set",
            StoreOp::Add => "add",
            StoreOp::Replace => "replace",
            StoreOp::Append => "append",
            StoreOp::Prepend => "prepend",
            StoreOp::Cas => "cas",
        }
    }
}

/// A storage command; its data block is [`Request::value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCommand {
    pub op: StoreOp,
    pub key: Bytes,
    pub flags: u32,
    pub exptime: i32,
    /// The compare value of `cas`; 0 for the other commands.
    pub cas: u64,
    pub noreply: bool,
}

/// `incr` or `decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Incr,
    Decr,
}

/// `incr`/`decr <key> <delta> [noreply]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArithCommand {
    pub op: ArithOp,
    pub key: Bytes,
    pub delta: u64,
    pub noreply: bool,
}

/// The meta commands that take a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOp {
    /// `mg`
    Get,
    /// `ms`
    Set,
    /// `md`
    Delete,
    /// `ma`
    Arith,
    /// `me`
    Debug,
}

impl MetaOp {
    pub fn name(self) -> &'static str {
        match self {
            MetaOp::Get => "mg",
            MetaOp::Set => "ms",
            MetaOp::Delete => "md",
            MetaOp::Arith => "ma",
            MetaOp::Debug => "me",
        }
    }
}

/// A meta command. For `ms` the data block is [`Request::value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaCommand {
    pub op: MetaOp,
    /// The key, base64-decoded when the `b` flag was given.
    pub key: Bytes,
    /// The key exactly as sent (base64 text when `b` was given), which is
    /// what `k` echoes back.
    pub wire_key: Bytes,
    pub flags: MetaFlags,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    #[test]
    fn a_request_moves_without_a_memcpy_call() {
        // Moves up to 128 bytes are copied inline; past that each move of
        // a request (several per request) calls memcpy.
        assert!(std::mem::size_of::<Request>() <= 128);
    }

    #[test]
    fn parse_and_strip_noreply() {
        let limits = Limits::default();
        let r = Request::parse(b"set k 1 2 3 noreply", b"abc", &limits).unwrap();
        assert!(r.is_quiet());
        let loud = r.without_noreply().unwrap();
        assert_eq!(&loud.raw_line()[..], b"set k 1 2 3");
        assert_eq!(&loud.value()[..], b"abc");
        assert!(!loud.is_quiet());
        let m = Request::parse(b"mg k v q O1", b"", &limits).unwrap();
        assert_eq!(&m.without_noreply().unwrap().raw_line()[..], b"mg k v O1");
        let plain = Request::parse(b"get a b", b"", &limits).unwrap();
        assert!(plain.without_noreply().is_none());
        assert!(Request::parse(b"bogus", b"", &limits).is_err());
    }
}
