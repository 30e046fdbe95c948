//! The hand-off of one queued request's reply, from its connection's
//! reader to the request's [`Sending`](super::Sending) future.
//!
//! Both ends live on the worker's thread, so this is a shared cell and a
//! waker: tokio's `oneshot` does the same across threads, with atomics and
//! cooperative-budget bookkeeping on every poll, which a request paid twice
//! (its first poll waits, the second takes the reply).
//!
//! The cells are reused: the end that goes last puts its cell in its
//! thread's spare list, and the next hand-off takes it from there, so a
//! request costs no allocation here (docs/benchmarks.md, run 24).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use memroute_proto::Response;

use super::error::BackendError;

/// What a request gets: its reply, or why it has none.
pub(crate) type Reply = Result<Response, BackendError>;

/// A reply and its round trip: from the request's queueing to the read
/// that brought its reply (or to its failure); none when the connection
/// went away without a word for it.
pub(crate) type Timed = (Reply, Option<Duration>);

enum State {
    /// No reply yet; the waker of the task waiting for it, once polled.
    Waiting(Option<Waker>),
    Ready(Timed),
    /// The receiver took the reply.
    Taken,
}

type Cell = Rc<RefCell<State>>;

/// Spare cells kept per thread; more than this many spare at once (after
/// a burst) are freed.
const SPARE_CELLS: usize = 1024;

thread_local! {
    static SPARE: RefCell<Vec<Cell>> = const { RefCell::new(Vec::new()) };
}

/// A new hand-off: the reader keeps the sender, the caller the receiver.
pub(crate) fn channel() -> (ReplySender, ReplyReceiver) {
    let state = SPARE
        .with(|spare| spare.borrow_mut().pop())
        .inspect(|cell| *cell.borrow_mut() = State::Waiting(None))
        .unwrap_or_else(|| Rc::new(RefCell::new(State::Waiting(None))));
    (ReplySender(state.clone()), ReplyReceiver(state))
}

/// Called by each end as it drops: the last one empties the cell (a reply
/// nobody took goes now) and keeps it for the next hand-off.
fn release(cell: &Cell) {
    if Rc::strong_count(cell) != 1 {
        return;
    }
    *cell.borrow_mut() = State::Taken;
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_CELLS {
            spare.push(cell.clone());
        }
    });
}

/// The reader's end. Dropped without [`send`](Self::send) (its queue went
/// away unanswered), the request fails with [`BackendError::Closed`].
pub(crate) struct ReplySender(Rc<RefCell<State>>);

impl ReplySender {
    /// Leaves `reply` and its round trip for the receiver (kept until
    /// dropped if the caller gave up) and wakes it.
    pub(crate) fn send(self, reply: Reply, round_trip: Duration) {
        self.fill((reply, Some(round_trip)));
    }

    fn fill(&self, reply: Timed) {
        let previous = std::mem::replace(&mut *self.0.borrow_mut(), State::Ready(reply));
        if let State::Waiting(Some(waker)) = previous {
            waker.wake();
        }
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        let unanswered = matches!(*self.0.borrow(), State::Waiting(_));
        if unanswered {
            self.fill((Err(BackendError::Closed), None));
        }
        release(&self.0);
    }
}

/// The caller's end: resolves to the reply.
pub(crate) struct ReplyReceiver(Rc<RefCell<State>>);

impl Drop for ReplyReceiver {
    fn drop(&mut self) {
        release(&self.0);
    }
}

impl Future for ReplyReceiver {
    type Output = Timed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Timed> {
        let mut state = self.0.borrow_mut();
        match &mut *state {
            State::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Ready(_) => match std::mem::replace(&mut *state, State::Taken) {
                State::Ready(reply) => Poll::Ready(reply),
                _ => unreachable!("matched Ready above"),
            },
            State::Taken => panic!("reply polled after it was taken"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn the_reply_reaches_the_receiver_once_sent() {
        let (tx, mut rx) = channel();
        assert!((&mut rx).now_or_never().is_none());
        tx.send(Ok(Response::miss()), Duration::from_micros(7));
        let (reply, round_trip) = rx.now_or_never().expect("ready");
        assert_eq!(reply.expect("a reply").raw().as_ref(), b"END\r\n");
        assert_eq!(round_trip, Some(Duration::from_micros(7)));
    }

    #[test]
    fn cells_are_reused_empty_once_both_ends_are_gone() {
        let (tx, rx) = channel();
        let first = Rc::as_ptr(&rx.0);
        tx.send(Ok(Response::miss()), Duration::ZERO);
        // The caller gave up: the reply waits in the cell until the cell
        // is released, then goes.
        drop(rx);
        let (tx, mut rx) = channel();
        assert_eq!(Rc::as_ptr(&rx.0), first, "the released cell is reused");
        assert!(
            (&mut rx).now_or_never().is_none(),
            "a reused cell starts empty"
        );
        tx.send(Ok(Response::miss()), Duration::ZERO);
        assert!(rx.now_or_never().expect("ready").0.is_ok());
        // An end still alive keeps its cell out of the spare list.
        let (tx, rx) = channel();
        drop(rx);
        let (_tx2, rx2) = channel();
        assert_ne!(Rc::as_ptr(&rx2.0), Rc::as_ptr(&tx.0));
    }

    #[test]
    fn a_sender_dropped_unanswered_fails_the_request() {
        let (tx, rx) = channel();
        drop(tx);
        let (reply, round_trip) = rx.now_or_never().expect("ready");
        assert!(matches!(reply, Err(BackendError::Closed)));
        assert_eq!(round_trip, None);
    }
}
