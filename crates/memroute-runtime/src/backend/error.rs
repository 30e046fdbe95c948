//! [`BackendError`]: why a request to a backend got no reply.

use std::io;
use std::sync::Arc;

use memroute_proto::response::MalformedResponse;

/// Why [`Backend::send`](super::Backend::send) produced no reply.
///
/// Cloneable: one connection failure fails every request in flight on it
/// with the same error. [`BackendError::client_reply`] is what the proxy
/// answers the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend is marked bad (or `down` by configuration) and fails fast
    /// until it is retried.
    #[error("backend is marked down")]
    Down,
    /// No usable connection: connecting failed or timed out, or the new
    /// connection failed its `version` check (kind `InvalidData`).
    #[error("cannot connect to backend: {0}")]
    Connect(#[source] Arc<io::Error>),
    /// No reply bytes for `read_timeout` while this request was in flight.
    #[error("backend read timed out")]
    Timeout,
    /// Reading from or writing to the backend failed.
    #[error("backend I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The backend's reply (to this or an earlier request on the same
    /// connection) did not fit the protocol; the connection was dropped.
    #[error("bad backend response: {0}")]
    BadResponse(#[source] MalformedResponse),
    /// The backend closed the connection with this request in flight, or the
    /// [`Backend`](super::Backend) was dropped.
    #[error("backend connection closed")]
    Closed,
    /// The chosen connection stayed at its in-flight limit
    /// ([`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT)) for a whole read timeout;
    /// not counted as a backend failure.
    #[error("too many requests in flight to backend")]
    Busy,
    /// The backend already had its `depthlimit` of requests queued or in
    /// flight: refused at once, not sent (memcached proxy's
    /// `backend_depth_limit`); not counted as a backend failure.
    #[error("backend depth limit reached")]
    DepthLimit,
}

impl BackendError {
    /// The line (without `\r\n`) to answer the client: `SERVER_ERROR bad
    /// response` for [`BackendError::BadResponse`], `SERVER_ERROR backend
    /// failure` for everything else (memcached proxy's words).
    pub fn client_reply(&self) -> &'static str {
        match self {
            BackendError::BadResponse(_) => "SERVER_ERROR bad response",
            _ => "SERVER_ERROR backend failure",
        }
    }

    pub(crate) fn io(error: io::Error) -> Self {
        BackendError::Io(Arc::new(error))
    }

    pub(crate) fn connect(error: io::Error) -> Self {
        BackendError::Connect(Arc::new(error))
    }
}
