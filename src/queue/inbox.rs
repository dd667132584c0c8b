//! A queue's data inbox: publishers on any thread, the queue's actor on its arbiter.
//!
//! A multi-producer channel (crossbeam-channel's unbounded list, allocated in blocks of 31 messages as
//! it fills) around two things that tokio's bounded channel did on every send and this inbox does only
//! when they are needed:
//! - waking the queue: a sender wakes it only when the queue has said it sleeps, which costs a read
//!   of a flag rather than a write to the waker's cache line, shared with the queue's thread;
//! - bounding: the publishers of `block` and `reject` queues take a credit per message (at most
//!   `depth_max` exist), which bounds the inbox already, so only the inboxes of `drop-head` queues
//!   count their messages, up to [`DROP_HEAD_INBOX_MAX`](super::DROP_HEAD_INBOX_MAX).
//!
//! Dead letters from other queues enter without a credit; they are bounded by what those queues held.
//!
//! The wake-up is a Dekker handshake: the sender pushes, then reads `sleeping`; the queue sets
//! `sleeping`, then looks for messages, each pair separated by a sequentially consistent fence, so at
//! least one of the two sees the other and no message waits while the queue sleeps.
//!
//! Closing (the queue is deleted or shut down) is the same handshake with `closed`, read after the
//! same fence at no extra cost: the queue sets `closed`, then takes in what the inbox holds; a
//! sender pushes, then reads `closed`. A sender that passed the first `closed` check and pushed
//! after the queue's last look finds `closed` set, and takes the inbox's late messages out itself,
//! counting them in `late` (enqueued into the deleted incarnation and dropped with it). So every
//! accepted message is counted once, by the queue or by a late sender, and none waits in a closed
//! inbox forever.

use std::pin::pin;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::protocol::Enqueue;

/// Why [`InboxSender::try_send`] did not send; the message is handed back.
#[derive(Debug)]
pub(crate) enum TrySendError {
    /// A bounded inbox is full.
    Full(Enqueue),
    /// The queue has been deleted.
    Closed(Enqueue),
}

struct Shared {
    /// The most messages the inbox holds, when it bounds them itself.
    bound: Option<usize>,
    /// Messages in a bounded inbox.
    len: AtomicUsize,
    /// Senders waiting for room in a bounded inbox.
    waiting: AtomicUsize,
    room: Notify,
    /// The queue found the inbox empty and waits for a wake-up.
    sleeping: AtomicBool,
    waker: AtomicWaker,
    /// The queue was deleted or shut down: sends fail.
    closed: AtomicBool,
    /// The inbox's own receiving end, for senders that find it closed after pushing.
    late_rx: Receiver<Enqueue>,
    /// Messages taken out by senders after the close (see the module docs).
    late: Arc<AtomicU64>,
    /// The sender is gone: once empty, the inbox has ended.
    sender_gone: AtomicBool,
}

/// The sending half, one per queue (in its `QueueHandle`, shared by reference).
pub(crate) struct InboxSender {
    tx: Sender<Enqueue>,
    shared: Arc<Shared>,
}

/// The receiving half, the queue actor's.
pub(crate) struct InboxReceiver {
    rx: Receiver<Enqueue>,
    shared: Arc<Shared>,
}

/// A new inbox; `bound` is the most messages it holds, `None` where publishers' credits bound it.
pub(crate) fn inbox(bound: Option<usize>) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        bound,
        len: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        room: Notify::new(),
        sleeping: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
        late_rx: rx.clone(),
        late: Arc::default(),
        sender_gone: AtomicBool::new(false),
    });
    (InboxSender { tx, shared: shared.clone() }, InboxReceiver { rx, shared })
}

impl std::fmt::Debug for InboxSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxSender").field("bound", &self.shared.bound).finish_non_exhaustive()
    }
}

impl InboxSender {
    /// Sends without waiting.
    pub(crate) fn try_send(&self, msg: Enqueue) -> Result<(), TrySendError> {
        let shared = &*self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(msg));
        }
        if let Some(bound) = shared.bound {
            if shared.len.fetch_add(1, Ordering::SeqCst) >= bound {
                shared.len.fetch_sub(1, Ordering::SeqCst);
                return Err(TrySendError::Full(msg));
            }
        }
        if let Err(back) = self.tx.send(msg) {
            if shared.bound.is_some() {
                shared.len.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(TrySendError::Closed(back.0));
        }
        fence(Ordering::SeqCst);
        if shared.closed.load(Ordering::Relaxed) {
            // Closed after the check above: the queue may have looked for the last time before this
            // push. Take out what is left (this message included) and count it.
            self.take_late();
            return Ok(());
        }
        if shared.sleeping.load(Ordering::Relaxed) && shared.sleeping.swap(false, Ordering::AcqRel) {
            shared.waker.wake();
        }
        Ok(())
    }

    fn take_late(&self) {
        let shared = &*self.shared;
        while shared.late_rx.try_recv().is_ok() {
            shared.late.fetch_add(1, Ordering::Relaxed);
            if shared.bound.is_some() {
                let before = shared.len.fetch_sub(1, Ordering::SeqCst);
                debug_assert!(before > 0, "a bounded inbox counts every message it holds");
            }
        }
    }

    /// Messages that arrived after the queue closed, counted as enqueued into it and dropped with it.
    pub(crate) fn late(&self) -> Arc<AtomicU64> {
        self.shared.late.clone()
    }

    /// Sends, waiting for room in a bounded inbox. Cancellation: if the future is dropped while
    /// waiting, the message has not been sent.
    pub(crate) async fn send(&self, mut msg: Enqueue) -> Result<(), Enqueue> {
        let shared = &*self.shared;
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => msg = back,
            }
            let mut notified = pin!(shared.room.notified());
            notified.as_mut().enable();
            let _waiting = Waiting::new(&shared.waiting);
            // Room made between the failed send and `enable` would not notify this waiter: try again.
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => msg = back,
            }
            notified.await;
        }
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        self.shared.sender_gone.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
    }
}

/// Counts a sender waiting for room while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InboxReceiver {
    /// Takes one message, if one is there.
    pub(crate) fn try_recv(&self) -> Option<Enqueue> {
        let msg = self.rx.try_recv().ok()?;
        self.taken(1);
        Some(msg)
    }

    /// Refuses further sends (the queue is being deleted or shut down); what is inside can still be
    /// taken, and must be, right after: see the module docs.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.shared.room.notify_waiters();
    }

    /// Whether nothing waits in the inbox.
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Takes up to `max` messages into `batch`: `Ready(n)` with `n > 0`, `Ready(0)` once the inbox is
    /// closed (or its sender gone) and empty, `Pending` (the task to be woken) when it is empty.
    pub(crate) fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Enqueue>,
        max: usize,
    ) -> Poll<usize> {
        let shared = &*self.shared;
        loop {
            let mut disconnected = false;
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.taken(batch.len());
                return Poll::Ready(batch.len());
            }
            let ended = |shared: &Shared| {
                shared.closed.load(Ordering::SeqCst) || shared.sender_gone.load(Ordering::SeqCst)
            };
            if disconnected || ended(shared) {
                return Poll::Ready(0);
            }
            shared.waker.register(cx.waker());
            shared.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.rx.is_empty() && !ended(shared) {
                return Poll::Pending;
            }
            shared.sleeping.store(false, Ordering::Relaxed);
        }
    }

    fn taken(&self, n: usize) {
        let shared = &*self.shared;
        if shared.bound.is_some() {
            let before = shared.len.fetch_sub(n, Ordering::SeqCst);
            debug_assert!(before >= n, "a bounded inbox counts every message it holds: {before} < {n}");
            if shared.waiting.load(Ordering::SeqCst) > 0 {
                shared.room.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests;
