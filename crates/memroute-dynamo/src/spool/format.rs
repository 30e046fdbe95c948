//! The spool's on-disk format: segment files of checksummed records.
//!
//! A segment file is a header, then records, back to back:
//!
//! ```text
//! header (20 bytes): "MRSPOOL1" | segment id: u64 | crc32c of the 16 bytes before: u32
//! record:            body length: u32 | crc32c of (the 4 length bytes, body): u32 | body
//! body, by kind:
//!   1 put      kind u8 | seq u64 | version u64 | key length u16 | key | flags u32 | expires i64 | value
//!   2 delete   kind u8 | seq u64 | version u64 | key length u16 | key
//!   3 confirm  kind u8 | seq u64 (of the write DynamoDB confirmed)
//! ```
//!
//! Integers are little-endian. `seq` numbers every write record of the spool
//! (increasing across segments and restarts). A reader stops at the first
//! record that is incomplete (a torn tail: the writer died mid-write) or
//! fails its checksum or shape (corruption); what came before is good.

use bytes::Bytes;

use crate::behind::QueuedOp;
use crate::item::Item;

pub const MAGIC: &[u8; 8] = b"MRSPOOL1";
pub const HEADER_LEN: usize = 20;
/// Length and checksum in front of every body.
pub const RECORD_HEAD: usize = 8;
/// No body is larger (a value is at most 400 KB; this only guards a
/// corrupt length from a huge allocation or a long skip).
pub const MAX_BODY: usize = 16 << 20;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_CONFIRM: u8 = 3;

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A queued write (put or delete) of key `id`.
    Write {
        seq: u64,
        version: u64,
        id: String,
        op: QueuedOp,
    },
    /// DynamoDB has the write numbered `seq` (or gave up on it for good).
    Confirm { seq: u64 },
}

/// How a segment's bytes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// At a record boundary.
    Clean,
    /// An incomplete header or record at the end (a write cut short).
    Torn { offset: usize },
    /// A record that fails its checksum or cannot be decoded.
    Corrupt { offset: usize, why: &'static str },
}

/// What [`read_segment`] found.
#[derive(Debug)]
pub struct SegmentRead {
    /// The id in the header (`None` if the header itself is unreadable or
    /// the file is empty).
    pub id: Option<u64>,
    pub records: Vec<Record>,
    pub tail: Tail,
    /// Bytes of the file that held good data (header and records).
    pub good_len: usize,
}

/// CRC-32C (Castagnoli), table driven.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_update(0, data)
}

fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The header of segment `id`.
pub fn header(id: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    let crc = crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Bytes a write record of `id` and `op` takes on disk.
pub fn write_len(id: &str, op: &QueuedOp) -> usize {
    RECORD_HEAD
        + 1
        + 8
        + 8
        + 2
        + id.len()
        + match op {
            QueuedOp::Put(item) => 4 + 8 + item.value.len(),
            QueuedOp::Delete => 0,
        }
}

/// Bytes a confirm record takes on disk.
pub const CONFIRM_LEN: usize = RECORD_HEAD + 1 + 8;

/// Appends a write record. `id` must be at most 65535 bytes (DynamoDB ids
/// are at most 2048).
pub fn encode_write(out: &mut Vec<u8>, seq: u64, version: u64, id: &str, op: &QueuedOp) {
    let start = begin(out);
    out.push(match op {
        QueuedOp::Put(_) => KIND_PUT,
        QueuedOp::Delete => KIND_DELETE,
    });
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    if let QueuedOp::Put(item) = op {
        out.extend_from_slice(&item.flags.to_le_bytes());
        out.extend_from_slice(&item.expires.to_le_bytes());
        out.extend_from_slice(&item.value);
    }
    finish(out, start);
}

/// Appends a confirm record for the write numbered `seq`.
pub fn encode_confirm(out: &mut Vec<u8>, seq: u64) {
    let start = begin(out);
    out.push(KIND_CONFIRM);
    out.extend_from_slice(&seq.to_le_bytes());
    finish(out, start);
}

fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEAD]);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let body_len = (out.len() - start - RECORD_HEAD) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c_update(crc32c(&body_len.to_le_bytes()), &out[start + RECORD_HEAD..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A little-endian reader over a body; `None` when it runs short.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes one body (its checksum already verified). `file` is the whole
/// segment, so values are slices of it rather than copies.
fn decode_body(file: &Bytes, start: usize, len: usize) -> Option<Record> {
    let body = &file[start..start + len];
    let mut c = Cursor { data: body, pos: 0 };
    let kind = c.u8()?;
    let seq = c.u64()?;
    if kind == KIND_CONFIRM {
        return (c.pos == body.len()).then_some(Record::Confirm { seq });
    }
    let version = c.u64()?;
    let id_len = usize::from(c.u16()?);
    let id = std::str::from_utf8(c.take(id_len)?).ok()?.to_owned();
    let op = match kind {
        KIND_DELETE => {
            if c.pos != body.len() {
                return None;
            }
            QueuedOp::Delete
        }
        KIND_PUT => {
            let flags = c.u32()?;
            let expires = c.u64()? as i64;
            let value = file.slice(start + c.pos..start + body.len());
            QueuedOp::Put(Item {
                value,
                flags,
                expires,
                cas: version,
            })
        }
        _ => return None,
    };
    Some(Record::Write {
        seq,
        version,
        id,
        op,
    })
}

/// Reads a segment file's bytes: its header and every good record, up to
/// the first torn or corrupt one.
pub fn read_segment(file: &Bytes) -> SegmentRead {
    let mut out = SegmentRead {
        id: None,
        records: Vec::new(),
        tail: Tail::Clean,
        good_len: 0,
    };
    if file.is_empty() {
        // Created, nothing written yet.
        return out;
    }
    if file.len() < HEADER_LEN {
        out.tail = Tail::Torn { offset: 0 };
        return out;
    }
    let head = &file[..HEADER_LEN];
    let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
    if &head[..8] != MAGIC || crc32c(&head[..16]) != crc {
        out.tail = Tail::Corrupt {
            offset: 0,
            why: "bad segment header",
        };
        return out;
    }
    out.id = Some(u64::from_le_bytes(
        head[8..16].try_into().unwrap_or_default(),
    ));
    let mut pos = HEADER_LEN;
    out.good_len = pos;
    while pos < file.len() {
        let Some(prefix) = file.get(pos..pos + RECORD_HEAD) else {
            out.tail = Tail::Torn { offset: pos };
            return out;
        };
        let len = u32::from_le_bytes(prefix[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(prefix[4..8].try_into().unwrap_or_default());
        if len == 0 || len > MAX_BODY {
            out.tail = Tail::Corrupt {
                offset: pos,
                why: "impossible record length",
            };
            return out;
        }
        let start = pos + RECORD_HEAD;
        if start + len > file.len() {
            out.tail = Tail::Torn { offset: pos };
            return out;
        }
        if crc32c_update(crc32c(&prefix[..4]), &file[start..start + len]) != crc {
            out.tail = Tail::Corrupt {
                offset: pos,
                why: "checksum mismatch",
            };
            return out;
        }
        let Some(record) = decode_body(file, start, len) else {
            out.tail = Tail::Corrupt {
                offset: pos,
                why: "undecodable record",
            };
            return out;
        };
        out.records.push(record);
        pos = start + len;
        out.good_len = pos;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: &'static [u8], version: u64) -> QueuedOp {
        QueuedOp::Put(Item {
            value: Bytes::from_static(value),
            flags: 7,
            expires: -3,
            cas: version,
        })
    }

    /// A segment holding a put, a delete and a confirm.
    fn sample() -> (Vec<u8>, Vec<Record>) {
        let mut buf = Vec::new();
        header(42, &mut buf);
        let records = vec![
            Record::Write {
                seq: 1,
                version: 100,
                id: "key".into(),
                op: put(b"hello", 100),
            },
            Record::Write {
                seq: 2,
                version: 101,
                id: "caf\u{e9}%FF".into(),
                op: QueuedOp::Delete,
            },
            Record::Write {
                seq: 3,
                version: 102,
                id: "empty".into(),
                op: put(b"", 102),
            },
            Record::Confirm { seq: 1 },
        ];
        for r in &records {
            let before = buf.len();
            match r {
                Record::Write {
                    seq,
                    version,
                    id,
                    op,
                } => {
                    encode_write(&mut buf, *seq, *version, id, op);
                    assert_eq!(buf.len() - before, write_len(id, op));
                }
                Record::Confirm { seq } => {
                    encode_confirm(&mut buf, *seq);
                    assert_eq!(buf.len() - before, CONFIRM_LEN);
                }
            }
        }
        (buf, records)
    }

    #[test]
    fn crc32c_known_value() {
        // The check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_update(crc32c(b"1234"), b"56789"), 0xe306_9283);
    }

    #[test]
    fn round_trip() {
        let (buf, records) = sample();
        let read = read_segment(&Bytes::from(buf.clone()));
        assert_eq!(read.id, Some(42));
        assert_eq!(read.tail, Tail::Clean);
        assert_eq!(read.records, records);
        assert_eq!(read.good_len, buf.len());
    }

    #[test]
    fn empty_and_header_only() {
        let read = read_segment(&Bytes::new());
        assert_eq!(
            (read.id, read.tail, read.records.len()),
            (None, Tail::Clean, 0)
        );
        let mut buf = Vec::new();
        header(1, &mut buf);
        let read = read_segment(&Bytes::from(buf));
        assert_eq!(
            (read.id, read.tail, read.records.len()),
            (Some(1), Tail::Clean, 0)
        );
    }

    /// Cut anywhere, a segment yields exactly the records wholly before
    /// the cut, and reports a torn tail unless the cut is at a boundary.
    #[test]
    fn torn_tail_at_every_length() {
        let (buf, records) = sample();
        let mut boundaries = vec![HEADER_LEN];
        let whole = read_segment(&Bytes::from(buf.clone()));
        let mut pos = HEADER_LEN;
        for r in &whole.records {
            pos += match r {
                Record::Write { id, op, .. } => write_len(id, op),
                Record::Confirm { .. } => CONFIRM_LEN,
            };
            boundaries.push(pos);
        }
        for cut in 1..buf.len() {
            let read = read_segment(&Bytes::copy_from_slice(&buf[..cut]));
            let whole_records = boundaries.iter().filter(|&&b| b <= cut).count();
            if cut < HEADER_LEN {
                assert_eq!(read.tail, Tail::Torn { offset: 0 }, "cut {cut}");
                assert!(read.records.is_empty());
                continue;
            }
            assert_eq!(read.records[..], records[..whole_records - 1], "cut {cut}");
            let last = boundaries[whole_records - 1];
            assert_eq!(read.good_len, last, "cut {cut}");
            if boundaries.contains(&cut) {
                assert_eq!(read.tail, Tail::Clean, "cut {cut}");
            } else {
                assert_eq!(read.tail, Tail::Torn { offset: last }, "cut {cut}");
            }
        }
    }

    /// Any single flipped bit is caught: the records before it are read,
    /// none from it on.
    #[test]
    fn bit_flip_anywhere_is_detected() {
        let (buf, records) = sample();
        let whole = read_segment(&Bytes::from(buf.clone()));
        assert_eq!(whole.records.len(), records.len());
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let read = read_segment(&Bytes::from(bad));
                assert_ne!(read.tail, Tail::Clean, "flip {byte}.{bit} went unnoticed");
                // Only whole records before the damaged one survive.
                assert!(read.good_len <= byte, "flip {byte}.{bit}");
                assert_eq!(
                    read.records[..],
                    records[..read.records.len()],
                    "flip {byte}.{bit}"
                );
            }
        }
    }

    #[test]
    fn zeroed_tail_is_not_data() {
        // What a power loss can leave: the file grew but the data did not
        // reach the disk.
        let (mut buf, records) = sample();
        let good = buf.len();
        buf.extend_from_slice(&[0; 64]);
        let read = read_segment(&Bytes::from(buf));
        assert_eq!(read.records, records);
        assert!(matches!(read.tail, Tail::Corrupt { offset, .. } if offset == good));
    }
}
