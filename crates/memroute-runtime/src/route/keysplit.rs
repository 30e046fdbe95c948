//! `route_keysplit` (mcrouter's KeySplitRoute): a hot key kept as N copies
//! under N keys, so its reads spread over the servers those keys hash to.
//!
//! This module owns the copy-key scheme and which commands reach which
//! copies. Copy 0 is the key itself (turning the route on keeps existing
//! items readable, as in mcrouter); copy `i` is the key with
//! [`COPY_SEPARATOR`] and `i` appended. A client key that itself ends like
//! a copy key (`...::ks<digits>`) is refused on this route, so a copy never
//! overwrites or answers for a user's own key. A key too long to take the
//! suffix within memcached's 250 bytes is not split: every command for it
//! uses copy 0 alone, so reads and writes still agree.
//!
//! Reads (`get`, `mg`) go to one copy picked at random (the next copies
//! in turn if its server fails), and the reply names the client's key. Writes (stores, deletes, touches, arithmetic)
//! go to every copy at once; the client gets the first error, else copy
//! 0's reply. CAS is kept on copy 0: `gets`/`gats` and `mg` with `c` (or
//! with lease/vivify flags) read copy 0, and a `cas` (or `ms` with `C`) is
//! checked on copy 0 alone; once it stores, the other copies are deleted
//! (before the client hears back) so no copy serves the older value.
//! `gat` and `mg` with `T` touch every copy and answer from one.

use std::rc::Rc;

use bytes::Bytes;
use memroute_proto::{Command, GetOp, Limits, MetaOp, Request, Response, StoreOp};

use super::explain::{with_children, Step};
use super::handlers::{first_error_or, renamed_value, with_key, Sampler};
use super::multiget::get_request;
use super::{ResponseFuture, Route};

/// What separates a key from its copy number.
pub const COPY_SEPARATOR: &[u8] = b"::ks";

/// Most copies a route may keep (mcrouter's limit).
pub const MAX_COPIES: usize = 1000;

/// `route_keysplit{ child, copies }`.
pub struct KeySplit {
    pub child: Rc<dyn Route>,
    pub copies: usize,
    limits: Limits,
    picker: Sampler,
    /// Bytes the longest suffix adds (`::ks` and the last copy's digits).
    suffix_len: usize,
}

/// Which copies a request goes to.
enum Reach {
    /// One copy at random (plain reads).
    Any,
    /// Copy 0 alone (CAS reads, and anything the route cannot split).
    First,
    /// Every copy; the reply is copy 0's, or the first error.
    All,
    /// Every copy; the reply is one picked at random (touching reads).
    AllAnswerAny,
    /// Copy 0 with a CAS check; on success the other copies are deleted.
    CompareAndSwap,
}

impl KeySplit {
    pub fn new(child: Rc<dyn Route>, copies: usize, limits: &Limits, seed: u64) -> KeySplit {
        KeySplit {
            child,
            copies,
            limits: limits.clone(),
            picker: Sampler::new(seed),
            suffix_len: COPY_SEPARATOR.len() + (copies.saturating_sub(1)).to_string().len(),
        }
    }

    /// Whether `key` reads like a copy key (`...::ks<digits>`).
    pub fn is_copy_key(key: &[u8]) -> bool {
        let digits = key.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && key[..key.len() - digits].ends_with(COPY_SEPARATOR)
    }

    /// The key of copy `i` (copy 0 is `key` itself).
    pub fn copy_key(key: &[u8], i: usize) -> Vec<u8> {
        let mut out = key.to_vec();
        if i > 0 {
            out.extend_from_slice(COPY_SEPARATOR);
            out.extend_from_slice(i.to_string().as_bytes());
        }
        out
    }

    fn reach(request: &Request) -> Reach {
        match request.command() {
            Command::Get(g) if g.keys.len() != 1 => Reach::First,
            Command::Get(g) => match g.op {
                GetOp::Get => Reach::Any,
                GetOp::Gat => Reach::AllAnswerAny,
                GetOp::Gets | GetOp::Gats => Reach::First,
            },
            Command::Store(s) if s.op == StoreOp::Cas => Reach::CompareAndSwap,
            Command::Store(_)
            | Command::Delete { .. }
            | Command::Touch { .. }
            | Command::Arith(_) => Reach::All,
            Command::Meta(m) => match m.op {
                MetaOp::Get => {
                    let f = &m.flags;
                    if [b'c', b'N', b'R', b'E'].iter().any(|l| f.has(*l)) {
                        Reach::First
                    } else if f.has(b'T') {
                        Reach::AllAnswerAny
                    } else {
                        Reach::Any
                    }
                }
                MetaOp::Set if m.flags.has(b'C') => Reach::CompareAndSwap,
                MetaOp::Set | MetaOp::Delete | MetaOp::Arith => Reach::All,
                MetaOp::Debug => Reach::Any,
            },
            _ => Reach::First,
        }
    }

    /// `request` sent to copy `i`, with a reply naming the client's key.
    fn send_to_copy(&self, request: &Request, key: &[u8], i: usize) -> ResponseFuture {
        if i == 0 {
            return self.child.clone().call(request.clone());
        }
        let copy = Self::copy_key(key, i);
        // A get is rebuilt from its parts: `gat`'s exptime comes before the
        // key and may be spelled like it.
        let sent = match request.command() {
            Command::Get(g) => Some(get_request(g, &[Bytes::from(copy.clone())])),
            _ => with_key(request, &copy, &self.limits),
        };
        let Some(sent) = sent else {
            return Box::pin(std::future::ready(Response::from_line(
                "SERVER_ERROR route_keysplit cannot rename the key",
            )));
        };
        let call = self.child.clone().call(sent);
        let key = key.to_vec();
        Box::pin(async move { renamed_value(call.await, &copy, &key) })
    }

    fn pick(&self) -> usize {
        ((self.picker.next() >> 16) % self.copies as u64) as usize
    }
}

impl Route for KeySplit {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("keysplit", [&self.child], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let Some(key) = request.key().cloned() else {
            return self.child.clone().call(request);
        };
        if Self::is_copy_key(&key) {
            return Box::pin(std::future::ready(Response::from_line(
                "CLIENT_ERROR key ends like a route_keysplit copy (::ks<digits>)",
            )));
        }
        let base64 = matches!(request.command(), Command::Meta(m) if m.flags.base64_key());
        if base64 || key.len() + self.suffix_len > self.limits.max_key_len {
            return self.child.clone().call(request);
        }
        match Self::reach(&request) {
            Reach::First => self.child.clone().call(request),
            Reach::Any => {
                // A copy whose server fails is skipped for the next one,
                // so a dead server costs its copies' readers a retry, not
                // an error.
                let first = self.pick();
                Box::pin(async move {
                    let mut reply = self.send_to_copy(&request, &key, first).await;
                    for step in 1..self.copies {
                        if reply.is_ok() {
                            break;
                        }
                        let next = (first + step) % self.copies;
                        reply = self.send_to_copy(&request, &key, next).await;
                    }
                    reply
                })
            }
            Reach::All | Reach::AllAnswerAny => {
                let answer = match Self::reach(&request) {
                    Reach::All => 0,
                    _ => self.pick(),
                };
                let sends: Vec<ResponseFuture> = (0..self.copies)
                    .map(|i| self.send_to_copy(&request, &key, i))
                    .collect();
                Box::pin(async move {
                    let replies = futures_util::future::join_all(sends).await;
                    first_error_or(replies, answer)
                        .unwrap_or_else(|| Response::from_line("SERVER_ERROR no copies"))
                })
            }
            Reach::CompareAndSwap => Box::pin(async move {
                let reply = self.child.clone().call(request).await;
                let line = reply.line();
                if line == b"STORED" || line.starts_with(b"HD") {
                    let deletes: Vec<ResponseFuture> = (1..self.copies)
                        .filter_map(|i| {
                            let mut delete = b"delete ".to_vec();
                            delete.extend_from_slice(&Self::copy_key(&key, i));
                            Request::parse(&delete, b"", &self.limits).ok()
                        })
                        .map(|d| self.child.clone().call(d))
                        .collect();
                    futures_util::future::join_all(deletes).await;
                }
                reply
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A child answering a fixed line, recording the lines it was sent.
    struct Recorder {
        reply: &'static str,
        seen: RefCell<Vec<String>>,
    }

    impl Route for Recorder {
        fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
            let line = String::from_utf8_lossy(request.raw_line()).into_owned();
            self.seen.borrow_mut().push(line);
            Box::pin(std::future::ready(Response::from_line(self.reply)))
        }
    }

    fn run(route: &Rc<KeySplit>, line: &str, value: &str) -> String {
        let request =
            Request::parse(line.as_bytes(), value.as_bytes(), &Limits::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let reply = rt.block_on(route.clone().call(request));
        String::from_utf8_lossy(reply.raw()).into_owned()
    }

    fn split(reply: &'static str) -> (Rc<Recorder>, Rc<KeySplit>) {
        let child = Rc::new(Recorder {
            reply,
            seen: RefCell::new(Vec::new()),
        });
        let route = Rc::new(KeySplit::new(child.clone(), 3, &Limits::default(), 7));
        (child, route)
    }

    #[test]
    fn writes_reach_every_copy_and_reads_one() {
        let (child, route) = split("STORED");
        assert_eq!(run(&route, "set k 1 0 1", "x"), "STORED\r\n");
        let mut seen = child.seen.borrow_mut().drain(..).collect::<Vec<_>>();
        seen.sort();
        assert_eq!(
            seen,
            ["set k 1 0 1", "set k::ks1 1 0 1", "set k::ks2 1 0 1"]
        );
        run(&route, "get k", "");
        run(&route, "gat 5 5", "");
        let seen = child.seen.borrow_mut().drain(..).collect::<Vec<_>>();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(["get k", "get k::ks1", "get k::ks2"].contains(&seen[0].as_str()));
        assert!(seen[1..].contains(&"gat 5 5::ks2".to_string()), "{seen:?}");
        // CAS reads and writes stay on copy 0.
        run(&route, "gets k", "");
        run(&route, "mg k c v", "");
        assert_eq!(*child.seen.borrow(), ["gets k", "mg k c v"]);
    }

    #[test]
    fn a_stored_cas_deletes_the_other_copies() {
        let (child, route) = split("STORED");
        assert_eq!(run(&route, "cas k 0 0 1 5", "x"), "STORED\r\n");
        assert_eq!(
            *child.seen.borrow(),
            ["cas k 0 0 1 5", "delete k::ks1", "delete k::ks2"]
        );
        let (child, route) = split("EXISTS");
        assert_eq!(run(&route, "cas k 0 0 1 5", "x"), "EXISTS\r\n");
        assert_eq!(*child.seen.borrow(), ["cas k 0 0 1 5"]);
    }

    #[test]
    fn copy_keys_cannot_be_user_keys() {
        assert_eq!(KeySplit::copy_key(b"hot", 0), b"hot");
        assert_eq!(KeySplit::copy_key(b"hot", 12), b"hot::ks12");
        assert!(KeySplit::is_copy_key(b"hot::ks12"));
        assert!(KeySplit::is_copy_key(b"::ks0"));
        for plain in [
            &b"hot"[..],
            b"hot::ks",
            b"a::b1",
            b"user::42",
            b"ks1",
            b"x:ks1",
        ] {
            assert!(!KeySplit::is_copy_key(plain), "{plain:?}");
        }
    }
}
