//! Writers for server replies, appending to a connection's write buffer.
//!
//! Replies are written straight into the caller's `BytesMut` with no
//! intermediate allocation; values are copied once, from the cache item into
//! the write buffer.

use bytes::{BufMut, BytesMut};

use crate::meta::base64_encode;
use crate::number::{write_i64, write_u64};

/// Writes `line` followed by `\r\n`.
pub fn line(out: &mut BytesMut, line: &str) {
    out.reserve(line.len() + 2);
    out.put_slice(line.as_bytes());
    out.put_slice(b"\r\n");
}

/// Writes a decimal number line (the reply to `incr`/`decr`).
pub fn number(out: &mut BytesMut, value: u64) {
    write_u64(out, value);
    out.put_slice(b"\r\n");
}

/// Writes one `VALUE <key> <flags> <bytes> [<cas>]` block of a retrieval
/// reply, including the data and its `\r\n`.
pub fn value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 64);
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_slice(b" ");
    write_u64(out, u64::from(flags));
    out.put_slice(b" ");
    write_u64(out, data.len() as u64);
    if let Some(cas) = cas {
        out.put_slice(b" ");
        write_u64(out, cas);
    }
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Writes `END\r\n`.
pub fn end(out: &mut BytesMut) {
    out.put_slice(b"END\r\n");
}

/// Writes `STAT <name> <value>\r\n`.
pub fn stat(out: &mut BytesMut, name: &str, value: impl std::fmt::Display) {
    use std::fmt::Write;
    // `BytesMut` implements `fmt::Write`; writing cannot fail.
    let _ = write!(out, "STAT {name} {value}\r\n");
}

/// Builds one meta reply line: a two-letter code, optional `VA` size, and
/// return flags, in the order the caller adds them.
pub struct MetaReply<'a> {
    out: &'a mut BytesMut,
}

impl<'a> MetaReply<'a> {
    /// Starts a reply with `code` (`HD`, `EN`, `NF`, `NS`, `EX`, `ME`).
    pub fn new(out: &'a mut BytesMut, code: &str) -> Self {
        out.reserve(64);
        out.put_slice(code.as_bytes());
        MetaReply { out }
    }

    /// Starts a `VA <size>` reply.
    pub fn value(out: &'a mut BytesMut, size: usize) -> Self {
        out.reserve(64 + size);
        out.put_slice(b"VA ");
        write_u64(out, size as u64);
        MetaReply { out }
    }

    /// Adds ` <letter><number>`.
    pub fn flag_u64(self, letter: u8, value: u64) -> Self {
        self.out.put_slice(&[b' ', letter]);
        write_u64(self.out, value);
        self
    }

    /// Adds ` <letter><signed number>` (`t-1` for items that never expire).
    pub fn flag_i64(self, letter: u8, value: i64) -> Self {
        self.out.put_slice(&[b' ', letter]);
        write_i64(self.out, value);
        self
    }

    /// Adds ` <letter><token>`.
    pub fn flag_bytes(self, letter: u8, token: &[u8]) -> Self {
        self.out.put_slice(&[b' ', letter]);
        self.out.put_slice(token);
        self
    }

    /// Adds ` <letter>` alone (`W`, `X`, `Z`, `b`).
    pub fn flag(self, letter: u8) -> Self {
        self.out.put_slice(&[b' ', letter]);
        self
    }

    /// Adds the key as `k<key>`, base64-encoding a binary key.
    pub fn key(self, key: &[u8], base64: bool) -> Self {
        self.out.put_slice(b" k");
        if base64 {
            base64_encode(key, self.out);
        } else {
            self.out.put_slice(key);
        }
        self
    }

    /// Ends the line; for `VA` replies the caller then writes the data with
    /// [`data`].
    pub fn finish(self) {
        self.out.put_slice(b"\r\n");
    }
}

/// Writes a value's data block and its `\r\n` (after a `VA` line).
pub fn data(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_blocks() {
        let mut out = BytesMut::new();
        value(&mut out, b"k", 5, b"hi", None);
        value(&mut out, b"k", 0, b"", Some(7));
        end(&mut out);
        assert_eq!(
            &out[..],
            b"VALUE k 5 2\r\nhi\r\nVALUE k 0 0 7\r\n\r\nEND\r\n"
        );
    }

    #[test]
    fn meta_lines() {
        let mut out = BytesMut::new();
        MetaReply::value(&mut out, 2)
            .flag_u64(b'f', 5)
            .flag_i64(b't', -1)
            .key(b"abc", true)
            .flag(b'b')
            .finish();
        data(&mut out, b"hi");
        MetaReply::new(&mut out, "HD")
            .flag_bytes(b'O', b"123")
            .finish();
        assert_eq!(&out[..], b"VA 2 f5 t-1 kYWJj b\r\nhi\r\nHD O123\r\n");
    }
}
