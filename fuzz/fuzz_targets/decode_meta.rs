//! Fuzzes the request decoder on meta commands: every line of the input is
//! given a meta command name (`mg`, `ms`, `md`, `ma`, `mn`, `me`, chosen by
//! the input), so the fuzzer spends its time in meta flags, base64 keys,
//! opaque tokens and `ms` data blocks rather than in finding command names.
//! The invariants are `decode_request`'s (see there).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/request.rs"]
mod request;

const OPS: [&[u8]; 8] = [b"mg ", b"ms ", b"md ", b"ma ", b"mn", b"me ", b"mg ", b"ms "];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((&ops, input)) = rest.split_first() else {
        return;
    };
    let mut stream = Vec::with_capacity(input.len() + 64);
    for (i, line) in input.split_inclusive(|&b| b == b'\n').enumerate() {
        let op = OPS[usize::from(ops.rotate_left(i as u32 % 8)) % OPS.len()];
        stream.extend_from_slice(op);
        stream.extend_from_slice(line);
    }
    request::check_stream(selector, &stream);
});
