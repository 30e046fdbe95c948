//! Sans-IO codecs for the memcached text, meta and binary protocols.
//!
//! This crate owns the bytes on the wire and nothing else: it has no
//! sockets, no tokio, no clock. Everything above it (the embedded cache
//! executor, the proxy runtime, the fuzz targets) feeds it bytes and gets
//! typed values back, or hands it typed values and gets bytes.
//!
//! # Layout
//! - [`limits`]: the operator-tunable bounds (key length, value size, line
//!   length, keys per multi-get).
//! - [`request`]: the typed request a client sent ([`Request`], [`Command`]),
//!   which keeps the raw line so a proxy can forward it untouched.
//! - [`meta`]: meta-command flags (`mg`/`ms`/`md`/`ma`/`me`), parsed once,
//!   in the order the client gave them.
//! - [`decode`]: the incremental client-request decoder. "Need more bytes"
//!   is `Ok(None)`, not an error; a malformed request yields the exact reply
//!   memcached would send, and whether the connection survives it.
//! - [`reply`]: low-level writers for server replies (`VALUE`, `VA`, `HD`...).
//! - [`response`]: the client side, for proxying: parse a backend's reply,
//!   given the request it answers.
//! - [`number`]: number parsing with memcached's exact acceptance rules.
//! - [`typed`]: a reply as a value ([`Reply`]), with its text, meta and
//!   binary encoders; what the embedded cache and stores answer.
//! - [`errors`]: every error line, defined once ([`ErrorReply`]).
//! - [`item`]: memcached's item semantics shared by every store (store
//!   modes, counter rules).
//! - [`binary`]: the binary protocol, translated to and from meta commands.
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use memroute_proto::{Command, Decoded, Limits, RequestDecoder};
//!
//! let mut decoder = RequestDecoder::new(Limits::default());
//! let mut buf = BytesMut::from(&b"set greeting 5 0 2\r\nhi\r\nget greeting\r\n"[..]);
//! let Some(Decoded::Request(set)) = decoder.decode(&mut buf) else { panic!() };
//! assert!(matches!(set.command(), Command::Store(s) if &s.key[..] == b"greeting" && s.flags == 5));
//! assert_eq!(&set.value()[..], b"hi");
//! let Some(Decoded::Request(get)) = decoder.decode(&mut buf) else { panic!() };
//! assert!(matches!(get.command(), Command::Get(g) if g.keys.len() == 1));
//! assert!(decoder.decode(&mut buf).is_none()); // buffer drained: need more bytes
//! ```

pub mod binary;
pub mod decode;
pub mod errors;
pub mod item;
pub mod limits;
pub mod meta;
pub mod number;
pub mod reply;
pub mod request;
pub mod response;
pub mod typed;

pub use decode::{Decoded, ProtocolError, RequestDecoder};
pub use errors::{ErrorClass, ErrorReply};
pub use item::{ArithMode, StoreMode};
pub use limits::Limits;
pub use meta::{MetaFlag, MetaFlags};
pub use request::{
    ArithCommand, ArithOp, Command, GetCommand, GetOp, MetaCommand, MetaOp, Request, StoreCommand,
    StoreOp,
};
pub use response::{
    decode_retrieval_piece, retrieval_head, take_retrieval_piece, Oversize, Response, ResponseCode,
    ResponseDecoder, RetrievalHead, RetrievalPiece,
};
pub use typed::{Reply, Status};

/// The longest key memcached accepts, in bytes.
pub const KEY_MAX_LENGTH: usize = 250;

/// Relative expiry times above this many seconds (30 days) are absolute
/// Unix timestamps.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;
