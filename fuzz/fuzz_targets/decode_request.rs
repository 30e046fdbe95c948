//! Fuzzes the client-request decoder.
//!
//! Input: byte 0 picks the chunk size the rest arrives in (and, with its top
//! bit, tight limits); the rest is the client's byte stream. Invariants:
//! - no panic;
//! - every `Some` consumes at least one byte, except `Close`, which ends
//!   the stream;
//! - every decoded request re-encodes and re-decodes to an equal request;
//! - chunking only matters through `Close` (a line past the limit with no
//!   newline yet): the chunked output is a prefix of the all-at-once output,
//!   and equal to it when the chunked run did not close.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/request.rs"]
mod request;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    request::check_stream(selector, input);
});
