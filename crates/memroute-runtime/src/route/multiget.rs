//! Multi-key gets on a route: a window of the client's keys at a time (the
//! connection sizes windows to its reply budget), sent either as one line
//! per backend (a memcached pool, [`Route::joins_keys`]) or once per key
//! (any other route), and their replies merged back into `VALUE` blocks in
//! the client's key order. A key whose request failed reads as a miss, so
//! the client still gets one well-formed reply (as mcrouter does).

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use memroute_proto::{
    decode_retrieval_piece, Command, GetCommand, Request, Response, RetrievalPiece,
};

use super::{ReplyFuture, Route};
use crate::backend::BackendError;

/// The `VALUE` blocks (no `END`) of `keys`, a window of a multi-key get's
/// keys, in their order.
pub fn window(route: &Rc<dyn Route>, get: &GetCommand, keys: &[Bytes]) -> ReplyFuture {
    if route.joins_keys() {
        if let Some(reply) = route.clone().multi_get(get_request(get, keys)) {
            return reply;
        }
    } else if let Some(reply) = route.clone().serve_keys(get, keys) {
        return reply;
    }
    let replies: Vec<ReplyFuture> = keys
        .iter()
        .map(|key| {
            route
                .clone()
                .serve(get_request(get, std::slice::from_ref(key)))
        })
        .collect();
    Box::pin(async move {
        let replies = futures_util::future::join_all(replies).await;
        value_blocks_of(replies.iter().map(|reply| &reply[..]))
    })
}

/// `get`/`gets`/`gat`/`gats` (as `get` has it) for `keys`.
pub fn get_request(get: &GetCommand, keys: &[Bytes]) -> Request {
    let mut line = BytesMut::with_capacity(keys.iter().map(|k| k.len() + 1).sum::<usize>() + 16);
    line.extend_from_slice(get.op.name().as_bytes());
    if get.op.touches() {
        line.extend_from_slice(b" ");
        memroute_proto::number::write_i64(&mut line, i64::from(get.exptime));
    }
    for key in keys {
        line.extend_from_slice(b" ");
        line.extend_from_slice(key);
    }
    let command = Command::Get(GetCommand {
        op: get.op,
        exptime: get.exptime,
        keys: keys.iter().cloned().collect(),
    });
    Request::new(line.freeze(), Bytes::new(), command)
}

/// The `VALUE` blocks of single-key replies, in order, each without its
/// `END`. A miss or an error for one key gives nothing: it reads as a miss.
pub fn value_blocks_of<'a>(replies: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    for reply in replies.filter(|r| r.starts_with(b"VALUE ")) {
        out.extend_from_slice(reply.strip_suffix(b"END\r\n").unwrap_or(reply));
    }
    out.freeze()
}

/// The `VALUE` blocks of a multi-key reply, in order, each with its `END`
/// (as a single-key reply). A failed request or an error line gives no
/// (more) blocks: those keys read as misses.
pub fn value_blocks(reply: Result<Response, BackendError>) -> VecDeque<Response> {
    let mut blocks = VecDeque::new();
    let Ok(reply) = reply else { return blocks };
    let mut buf = BytesMut::from(&reply.raw()[..]);
    while let Ok(Some(RetrievalPiece::Value(block))) = decode_retrieval_piece(&mut buf) {
        blocks.push_back(block);
    }
    blocks
}
