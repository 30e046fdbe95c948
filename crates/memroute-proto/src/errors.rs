//! Every error line memroute sends, defined once.
//!
//! memcached answers a refused request with one line: `ERROR`,
//! `CLIENT_ERROR <why>` (the client's fault) or `SERVER_ERROR <why>` (the
//! server's). [`ErrorReply`] names each such line memroute can send — the
//! ones memcached sends, byte for byte, and memroute's own (backend and
//! store failures) — so the decoder, the embedded cache, the DynamoDB pool
//! and the runtime all write the same text, and the binary encoder can map
//! an error to its status code by what it is rather than by its wording.

/// Which of memcached's three error families a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// `ERROR`: an unknown command.
    Error,
    /// `CLIENT_ERROR ...`: the request was malformed or not allowed.
    Client,
    /// `SERVER_ERROR ...`: the server could not do what was asked.
    Server,
}

impl ErrorClass {
    /// The class of an error line, from its first token; `None` if the line
    /// is not an error.
    pub fn of_line(line: &[u8]) -> Option<ErrorClass> {
        let first = line.split(|&b| b == b' ').next().unwrap_or(line);
        match first {
            b"ERROR" => Some(ErrorClass::Error),
            b"CLIENT_ERROR" => Some(ErrorClass::Client),
            b"SERVER_ERROR" | b"SERVER_ERROR:" => Some(ErrorClass::Server),
            _ => None,
        }
    }
}

/// Declares the table: each variant, its text, and whether memcached itself
/// sends it (the rest are memroute's own).
macro_rules! error_table {
    ($($(#[$doc:meta])* $name:ident = $text:literal, $from_memcached:literal;)*) => {
        /// One error line memroute can send; [`ErrorReply::text`] is the line
        /// without `\r\n`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorReply {
            $($(#[$doc])* $name,)*
        }

        impl ErrorReply {
            /// Every variant, in table order.
            pub const ALL: &'static [ErrorReply] = &[$(ErrorReply::$name,)*];

            /// The line sent, without `\r\n`.
            pub const fn text(self) -> &'static str {
                match self {
                    $(ErrorReply::$name => $text,)*
                }
            }

            /// Whether memcached 1.6 sends this very line (the others are
            /// memroute's own, for failures memcached cannot have).
            pub const fn from_memcached(self) -> bool {
                match self {
                    $(ErrorReply::$name => $from_memcached,)*
                }
            }
        }
    };
}

error_table! {
    /// An unknown command.
    Error = "ERROR", true;
    BadFormat = "CLIENT_ERROR bad command line format", true;
    BadChunk = "CLIENT_ERROR bad data chunk", true;
    BadExptime = "CLIENT_ERROR invalid exptime argument", true;
    /// `incr`/`decr` with a delta that is not a number.
    BadDelta = "CLIENT_ERROR invalid numeric delta argument", true;
    DeleteUsage = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]", true;
    /// A multi-get over more keys than `Limits::max_keys_per_get` (a limit
    /// memcached does not have; off by default).
    TooManyKeys = "CLIENT_ERROR too many keys", false;
    /// `incr`/`decr` on a value that is not a number.
    NonNumeric = "CLIENT_ERROR cannot increment or decrement non-numeric value", true;
    /// A meta flag given twice.
    DuplicateFlag = "CLIENT_ERROR duplicate flag", true;
    InvalidFlag = "CLIENT_ERROR invalid flag", true;
    /// `md`/`ma` report both problems with one line.
    InvalidOrDuplicateFlag = "CLIENT_ERROR invalid or duplicate flag", true;
    BadToken = "CLIENT_ERROR bad token in command line format", true;
    BadModeLength = "CLIENT_ERROR incorrect length for M token", true;
    BadInitial = "CLIENT_ERROR invalid numeric initial value", true;
    /// `ma` with a `D` token that is not a number.
    BadDeltaValue = "CLIENT_ERROR invalid numeric delta value", true;
    OpaqueTooLong = "CLIENT_ERROR opaque token too long", true;
    BadSetMode = "CLIENT_ERROR invalid mode for ms M token", true;
    BadArithMode = "CLIENT_ERROR invalid mode for ma M token", true;
    KeyDecode = "CLIENT_ERROR error decoding key", true;
    /// An `mg` line with too many tokens.
    GetOptionsTooLong = "CLIENT_ERROR options flags are too long", true;
    /// Another meta line with too many tokens.
    OptionsTooLong = "CLIENT_ERROR options flags too long", true;
    /// An item larger than the item size limit (`-I`).
    TooLarge = "SERVER_ERROR object too large for cache", true;
    /// An item that can never fit in the memory limit.
    NoMemoryStoring = "SERVER_ERROR out of memory storing object", true;
    /// A counter that cannot be created for lack of memory; memcached
    /// proxy's reply to a request over its buffer memory limit too.
    NoMemory = "SERVER_ERROR out of memory", true;
    /// memcached 1.6.45's wording (1.6.18 sent `ERROR: shutdown not enabled`).
    Shutdown = "SERVER_ERROR: shutdown not enabled", true;
    /// memcached proxy's `mcp.active_req_limit` refusal.
    ActiveLimit = "SERVER_ERROR active request limit reached", true;
    /// memcached's answer when a retrieval's reply cannot be buffered
    /// (memroute: a value past the proxy's reply budget).
    NoMemoryForReply = "SERVER_ERROR out of memory writing get response", true;
    /// memcached proxy's answer when a route's Lua code fails.
    LuaFailure = "SERVER_ERROR lua failure", true;
    /// A backend (memcached server or DynamoDB) failed to answer.
    BackendFailure = "SERVER_ERROR backend failure", false;
    /// A backend answered with something that is not memcached protocol.
    BadResponse = "SERVER_ERROR bad response", false;
    /// The DynamoDB write-behind spool had no room in time.
    SpoolFull = "SERVER_ERROR write-behind spool full", false;
    /// The DynamoDB write-behind spool could not write.
    SpoolFailed = "SERVER_ERROR write-behind spool failed", false;
    DynamoUnsupported = "CLIENT_ERROR unsupported by the DynamoDB pool", false;
    DynamoFlushUnsupported = "SERVER_ERROR flush_all is not supported by the DynamoDB pool", false;
    DynamoBadKey = "CLIENT_ERROR key is not usable as a DynamoDB string key", false;
    SessionUnsupported = "CLIENT_ERROR unsupported by the PHP session store", false;
    NotSessionKey = "CLIENT_ERROR not a PHP session key", false;
    SessionFlags = "CLIENT_ERROR the PHP session store keeps no client flags", false;
    SessionNotUtf8 = "SERVER_ERROR session data is not UTF-8 (the table stores it as a string)", false;
}

impl ErrorReply {
    /// The error family of this line.
    pub fn class(self) -> ErrorClass {
        ErrorClass::of_line(self.text().as_bytes()).expect("every table entry is an error line")
    }

    /// The table entry whose text is exactly `line` (without `\r\n`).
    pub fn from_line(line: &[u8]) -> Option<ErrorReply> {
        ErrorReply::ALL
            .iter()
            .copied()
            .find(|e| e.text().as_bytes() == line)
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_one_error_of_its_class_and_found_again_by_its_text() {
        for &e in ErrorReply::ALL {
            let text = e.text();
            assert!(!text.contains(['\r', '\n']), "{e:?}");
            let class = e.class();
            let prefix = match class {
                ErrorClass::Error => "ERROR",
                ErrorClass::Client => "CLIENT_ERROR ",
                ErrorClass::Server => "SERVER_ERROR",
            };
            assert!(text.starts_with(prefix), "{e:?}: {text}");
            assert_eq!(ErrorReply::from_line(text.as_bytes()), Some(e), "{e:?}");
        }
        assert_eq!(ErrorReply::from_line(b"SERVER_ERROR something else"), None);
        assert_eq!(
            ErrorClass::of_line(b"SERVER_ERROR something else"),
            Some(ErrorClass::Server)
        );
        assert_eq!(ErrorClass::of_line(b"STORED"), None);
    }
}
