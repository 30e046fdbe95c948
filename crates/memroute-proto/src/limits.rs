//! Operator-tunable bounds the decoder enforces.
//!
//! Defaults match memcached 1.6 so that memroute is a drop-in replacement:
//! anything memcached accepts, memroute accepts.

/// memcached's per-item header with CAS enabled, which counts against
/// [`Limits::max_item_size`]: with 1 MiB and a 1-byte key, the largest value
/// memcached stores is 1048516 bytes, and so does memroute.
pub const ITEM_HEADER_SIZE: usize = 56;

/// Bounds applied while decoding client requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes (memcached: 250). For meta commands with the
    /// `b` flag this applies to the decoded key.
    pub max_key_len: usize,
    /// Largest item a storage command may create (memcached's `-I`, 1 MiB),
    /// counted as memcached counts it: [`ITEM_HEADER_SIZE`] + key + 1 +
    /// value + 2. Larger ones are answered `SERVER_ERROR object too large for
    /// cache` and their bytes are swallowed.
    pub max_item_size: usize,
    /// How many bytes may arrive without a newline before the connection is
    /// closed, for commands other than retrievals (memcached: 2048).
    pub max_line_len: usize,
    /// The same bound for `get`/`gets`/`gat`/`gats` lines, which carry many
    /// keys (memcached streams these without a limit; we keep a generous one).
    pub max_get_line_len: usize,
    /// Most keys in one multi-get. `usize::MAX` (the default) means no limit,
    /// like memcached; past the limit the reply is
    /// `CLIENT_ERROR too many keys`.
    pub max_keys_per_get: usize,
    /// Whether keys may contain control characters (bytes below 0x21 or
    /// 0x7f). protocol.txt forbids them, but memcached's text parser does
    /// not check, and real clients send them (memcaslap's keys start with
    /// eight 0x10 bytes), so by default they are accepted, as memcached
    /// accepts them. When false they are refused with
    /// `CLIENT_ERROR bad command line format`.
    pub allow_control_chars_in_keys: bool,
}

impl Limits {
    /// Whether an item with this key and value length fits in
    /// [`Limits::max_item_size`].
    pub fn item_fits(&self, key_len: usize, value_len: usize) -> bool {
        ITEM_HEADER_SIZE + key_len + 1 + value_len.saturating_add(2) <= self.max_item_size
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: crate::KEY_MAX_LENGTH,
            max_item_size: 1024 * 1024,
            max_line_len: 2048,
            max_get_line_len: 1024 * 1024,
            max_keys_per_get: usize::MAX,
            allow_control_chars_in_keys: true,
        }
    }
}

/// Frames up to this size are copied out of a connection's read buffer;
/// larger ones are split off without copying.
///
/// A split-off frame shares the read buffer's allocation for as long as it
/// lives (a request or reply is held by a route, a Lua object waiting for
/// the garbage collector, a backend queue), so the next read cannot reuse
/// the buffer and must allocate a new one: a whole read chunk per small
/// frame. Copying a small frame costs less than that and lets the buffer be
/// reused in place.
pub const COPY_FRAMES_UP_TO: usize = 8 * 1024;

/// Takes the first `len` bytes of `buf` as a frame: copied when small,
/// split off (zero-copy) when large. See [`COPY_FRAMES_UP_TO`].
pub fn take_frame(buf: &mut bytes::BytesMut, len: usize) -> bytes::Bytes {
    if len <= COPY_FRAMES_UP_TO {
        let frame = copy_frame(&buf[..len]);
        bytes::Buf::advance(buf, len);
        frame
    } else {
        buf.split_to(len).freeze()
    }
}

/// A copy of `bytes` as a frame that slices and clones cheaply.
///
/// A `Bytes` copied from a slice owns a plain vector; the first slice or
/// clone taken of it (the decoder takes the keys as slices of their
/// frame) must then allocate a shared reference count for it, and its last
/// drop frees two blocks. A small frame is instead copied into one block
/// that holds its reference count too ([`bytes::Bytes::from_owner`]), in
/// a few sizes so that little of the block is left unused: one allocation
/// and one free a frame, about 230 instructions fewer for a proxied get
/// (docs/benchmarks.md, run 24).
pub fn copy_frame(bytes: &[u8]) -> bytes::Bytes {
    match bytes.len() {
        0 => bytes::Bytes::new(),
        1..=64 => inline_frame::<64>(bytes),
        65..=128 => inline_frame::<128>(bytes),
        129..=256 => inline_frame::<256>(bytes),
        257..=512 => inline_frame::<512>(bytes),
        _ => bytes::Bytes::copy_from_slice(bytes),
    }
}

/// A frame's bytes held inline, up to `N` of them.
struct InlineFrame<const N: usize> {
    len: usize,
    data: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for InlineFrame<N> {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

fn inline_frame<const N: usize>(bytes: &[u8]) -> bytes::Bytes {
    let mut frame = InlineFrame {
        len: bytes.len(),
        data: [0; N],
    };
    frame.data[..bytes.len()].copy_from_slice(bytes);
    bytes::Bytes::from_owner(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn buffer_with(frame_len: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(2 * frame_len + 64);
        buf.extend((0..frame_len + 10).map(|i| i as u8));
        buf
    }

    #[test]
    fn copied_frames_of_every_size_class_keep_their_bytes() {
        for len in [0, 1, 63, 64, 65, 128, 129, 256, 257, 512, 513, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let frame = copy_frame(&bytes);
            assert_eq!(&frame[..], &bytes[..], "len {len}");
            // Slices and clones see the same bytes, and outlive the frame.
            let tail = frame.slice(len / 2..);
            let clone = frame.clone();
            drop(frame);
            assert_eq!(&tail[..], &bytes[len / 2..]);
            assert_eq!(&clone[..], &bytes[..]);
            let mut truncated = clone;
            truncated.truncate(len / 3);
            assert_eq!(&truncated[..], &bytes[..len / 3]);
        }
    }

    #[test]
    fn small_frames_leave_the_buffer_reusable() {
        let mut buf = buffer_with(100);
        let frame = take_frame(&mut buf, 100);
        assert_eq!(
            &frame[..],
            &(0..100).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(buf.len(), 10);
        buf.clear();
        // The frame lives on, yet the buffer's memory can be reused.
        assert!(buf.try_reclaim(100));
        drop(frame);
    }

    #[test]
    fn large_frames_are_split_without_copying() {
        let len = COPY_FRAMES_UP_TO + 1;
        let mut buf = buffer_with(len);
        let start = buf.as_ptr();
        let frame = take_frame(&mut buf, len);
        assert_eq!(frame.as_ptr(), start);
        assert_eq!(frame.len(), len);
        assert_eq!(buf.len(), 10);
    }
}
