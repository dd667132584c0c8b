//! Loom models of the queue inbox's two handshakes (`src/queue/inbox.rs`), explored over every
//! interleaving of the model's threads and every order the memory model allows:
//!
//! - **wake-up**: a sender pushes, fences, then reads `sleeping`; the queue sets `sleeping`, fences,
//!   then looks for messages. No message may wait while the queue sleeps.
//! - **close**: the queue sets `closed`, fences, then takes in what the inbox holds; a sender checks
//!   `closed`, pushes, fences, reads `closed` again and, if set, takes out the late messages itself.
//!   Every pushed message is counted exactly once, by the queue or by a late sender, and none is left.
//!
//! The channel is modelled as a mutex around a deque (crossbeam's list channel is linearizable, as
//! the mutex is); the flags, fences and orderings are the inbox's own.

use std::collections::VecDeque;

use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

#[derive(Default)]
struct Inbox {
    channel: Mutex<VecDeque<u32>>,
    sleeping: AtomicBool,
    woken: AtomicBool,
    closed: AtomicBool,
    /// Taken in by the queue.
    taken: AtomicUsize,
    /// Taken out by late senders.
    late: AtomicUsize,
}

impl Inbox {
    /// `InboxSender::try_send`: whether the message was accepted.
    fn send(&self, msg: u32) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.channel.lock().unwrap().push_back(msg);
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Relaxed) {
            while self.channel.lock().unwrap().pop_front().is_some() {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.woken.store(true, Ordering::Release);
        }
        true
    }

    /// `InboxReceiver::poll_recv_many`: takes what is there, or goes to sleep; whether it slept.
    fn poll(&self) -> bool {
        if self.take_all() > 0 {
            return false;
        }
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.channel.lock().unwrap().is_empty() {
            return true;
        }
        self.sleeping.store(false, Ordering::Relaxed);
        self.take_all();
        false
    }

    /// `InboxReceiver::close` followed by the queue's drain.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.take_all();
    }

    fn take_all(&self) -> usize {
        let mut n = 0;
        while self.channel.lock().unwrap().pop_front().is_some() {
            n += 1;
        }
        self.taken.fetch_add(n, Ordering::Relaxed);
        n
    }
}

#[test]
fn no_message_waits_while_the_queue_sleeps() {
    loom::model(|| {
        let inbox = Arc::new(Inbox::default());
        let sender = {
            let inbox = inbox.clone();
            thread::spawn(move || inbox.send(1))
        };
        let slept = inbox.poll();
        assert!(sender.join().unwrap());
        if slept {
            // Asleep: the sender must have seen it and woken the queue, which then takes the message.
            assert!(inbox.woken.load(Ordering::Acquire), "a message waits while the queue sleeps");
            inbox.take_all();
        }
        assert_eq!(inbox.taken.load(Ordering::Relaxed), 1);
    });
}

/// Every interleaving with up to three preemptions (loom's advice for models of this size; the
/// unbounded exploration passes too, in two minutes).
fn bounded(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn a_send_racing_the_close_is_counted_once() {
    bounded(|| {
        let inbox = Arc::new(Inbox::default());
        let senders: Vec<_> = (0..2)
            .map(|i| {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.send(i))
            })
            .collect();
        inbox.close();
        let accepted = senders.into_iter().map(|s| s.join().unwrap()).filter(|a| *a).count();
        let counted = inbox.taken.load(Ordering::Relaxed) + inbox.late.load(Ordering::Relaxed);
        assert_eq!(counted, accepted, "accepted messages and counted messages differ");
        assert!(inbox.channel.lock().unwrap().is_empty(), "a message was left in a closed inbox");
    });
}

/// The broken order (drain, then close) loses a message on some interleaving: the model can fail.
#[test]
fn draining_before_closing_loses_a_message() {
    let lost = std::panic::catch_unwind(|| {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            let sender = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.send(1))
            };
            inbox.take_all();
            inbox.closed.store(true, Ordering::SeqCst);
            let accepted = usize::from(sender.join().unwrap());
            // The broken close never looks again, and the sender's late check runs before the close.
            let counted = inbox.taken.load(Ordering::Relaxed) + inbox.late.load(Ordering::Relaxed);
            assert_eq!(counted, accepted);
        })
    });
    assert!(lost.is_err(), "loom found no interleaving that loses the message");
}

/// The credit path of `block` queues (`QueueHandle::offer`): a publisher takes a credit or waits for
/// one; deleting the queue or shutting down closes the credits, and a waiting publisher must then
/// find the queue closed rather than wait forever. Modelled with a mutex around (permits, closed) and
/// a notification, as tokio's semaphore is a mutex-guarded wait list.
#[derive(Default)]
struct Credits {
    state: Mutex<(usize, bool)>,
    changed: loom::sync::Notify,
}

impl Credits {
    /// `Semaphore::acquire`: a credit, or `None` once closed.
    fn acquire(&self) -> Option<()> {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.1 {
                    return None;
                }
                if state.0 > 0 {
                    state.0 -= 1;
                    return Some(());
                }
            }
            self.changed.wait();
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify();
    }
}

#[test]
fn a_publisher_waiting_for_credit_is_released_by_the_close() {
    bounded(|| {
        let credits = Arc::new(Credits::default());
        let inbox = Arc::new(Inbox::default());
        let publisher = {
            let (credits, inbox) = (credits.clone(), inbox.clone());
            thread::spawn(move || credits.acquire().map(|()| inbox.send(1)).unwrap_or(false))
        };
        // The queue is deleted: its credits close, then its inbox.
        credits.close();
        inbox.close();
        let accepted = usize::from(publisher.join().unwrap());
        let counted = inbox.taken.load(Ordering::Relaxed) + inbox.late.load(Ordering::Relaxed);
        assert_eq!(counted, accepted, "a credited publish was lost in the close");
    });
}
