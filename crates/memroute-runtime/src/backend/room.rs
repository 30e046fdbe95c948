//! A backend connection's room for requests in flight: a fair counting
//! semaphore for one thread.
//!
//! Every request a connection queues takes one unit of room and gives it
//! back when it leaves the queue. A backend connection belongs to one
//! worker, so its room needs no atomics and no lock: taking and giving
//! back room on the common path (room free, nobody waiting) is a counter
//! change, where tokio's `Semaphore` (made for many threads) locks a mutex
//! to give back. Like it, the room is fair: room given back goes to the
//! oldest waiter first, and nobody takes free room while others wait for
//! it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Units of room, and who waits for one.
pub(crate) struct Room {
    free: Cell<usize>,
    /// Waiting for one unit each, oldest first.
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

/// One waiting taker: given its unit directly by [`Room::give`].
#[derive(Default)]
struct Waiter {
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Room {
    pub(crate) fn new(units: usize) -> Room {
        Room {
            free: Cell::new(units),
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    /// Takes a unit if one is free and nobody waits for one.
    pub(crate) fn try_take(&self) -> bool {
        let free = self.free.get();
        if free == 0 || !self.waiters.borrow().is_empty() {
            return false;
        }
        self.free.set(free - 1);
        true
    }

    /// Takes a unit, waiting behind earlier waiters until one is given
    /// back. Dropping the future gives up the wait (and a unit it was
    /// handed meanwhile goes to the next waiter).
    pub(crate) fn take(&self) -> Take<'_> {
        Take {
            room: self,
            waiter: None,
        }
    }

    /// Gives back `units`: to the oldest waiters first, the rest is free.
    pub(crate) fn give(&self, units: usize) {
        let mut left = units;
        while left > 0 {
            let waiter = self.waiters.borrow_mut().pop_front();
            let Some(waiter) = waiter else { break };
            waiter.granted.set(true);
            if let Some(waker) = waiter.waker.borrow_mut().take() {
                waker.wake();
            }
            left -= 1;
        }
        self.free.set(self.free.get() + left);
    }
}

/// [`Room::take`]'s wait.
pub(crate) struct Take<'r> {
    room: &'r Room,
    /// Set once it waits in line.
    waiter: Option<Rc<Waiter>>,
}

impl Future for Take<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match &this.waiter {
            None => {
                if this.room.try_take() {
                    return Poll::Ready(());
                }
                let waiter = Rc::new(Waiter::default());
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                this.room.waiters.borrow_mut().push_back(waiter.clone());
                this.waiter = Some(waiter);
                Poll::Pending
            }
            Some(waiter) if waiter.granted.get() => {
                // The unit is ours: nothing to give back on drop.
                this.waiter = None;
                Poll::Ready(())
            }
            Some(waiter) => {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Take<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if waiter.granted.get() {
            // Handed a unit it will not use: it goes on to the next.
            self.room.give(1);
        } else {
            self.room
                .waiters
                .borrow_mut()
                .retain(|other| !Rc::ptr_eq(other, &waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(take: &mut Pin<Box<Take<'_>>>, wakes: &Arc<Count>) -> bool {
        let waker = Waker::from(wakes.clone());
        take.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    #[test]
    fn free_units_are_taken_until_none_is_left() {
        let room = Room::new(2);
        assert!(room.try_take());
        assert!(room.try_take());
        assert!(!room.try_take());
        room.give(1);
        assert!(room.try_take());
    }

    type Waiting<'r> = Pin<Box<Take<'r>>>;

    /// `room`, of one unit, full, with two takers waiting in line.
    fn two_waiting(room: &Room) -> (Arc<Count>, Waiting<'_>, Waiting<'_>) {
        assert!(room.try_take());
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let mut first = Box::pin(room.take());
        let mut second = Box::pin(room.take());
        assert!(!poll(&mut first, &wakes));
        assert!(!poll(&mut second, &wakes));
        (wakes, first, second)
    }

    #[test]
    fn units_given_back_go_to_the_oldest_waiter_first() {
        let room = Room::new(1);
        let (wakes, mut first, mut second) = two_waiting(&room);
        room.give(1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        // Nobody takes a unit past the waiters, even one just given back.
        assert!(!room.try_take());
        assert!(!poll(&mut second, &wakes));
        assert!(poll(&mut first, &wakes));
        room.give(1);
        assert!(poll(&mut second, &wakes));
        room.give(1);
        assert!(room.try_take());
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_its_place_and_its_unit() {
        let room = Room::new(1);
        let (wakes, first, mut second) = two_waiting(&room);
        // Gives up before any unit came: out of the line.
        drop(first);
        room.give(1);
        assert!(poll(&mut second, &wakes));
        drop(second);
        // Handed a unit, then gave up: the unit goes on, here to be free.
        let mut third = Box::pin(room.take());
        assert!(!poll(&mut third, &wakes));
        room.give(1);
        drop(third);
        assert!(room.try_take());
        assert!(!room.try_take());
    }
}
