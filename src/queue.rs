//! Queues: bounded FIFO buffers between topics and subscribers.
//!
//! A queue is an actor (`actor.rs`) around a plain state machine (`state.rs`). Publishers hand it
//! messages through one shared mailbox sender; it dispatches them round robin to its subscribers, keeps
//! at-least-once deliveries until they are settled, and passes what it cannot keep to its dead-letter
//! queue.
//!
//! # Delivery guarantees
//! - `at-least-once`: a delivery stays in the queue, unacked, until the subscriber acks it. A nack with
//!   requeue, a handler panic, the subscriber leaving, or the ack deadline (`ack_timeout_ms`) passing
//!   puts it back, marked redelivered, with its delivery count raised; past `delivery_limit` it is
//!   dead-lettered with reason `delivery_limit`. A message may so be handled more than once: make
//!   consumers idempotent for an exactly-once effect. A retry with a delay (`Outcome::Retry`,
//!   `Acker::retry`) puts it back the same way, kept aside until the delay has passed.
//! - `at-most-once`: a message leaves the queue when it is handed to a subscriber (auto-ack). If the
//!   subscriber dies before its handler runs, the message is lost and counted in
//!   `dropped.lost_at_most_once`; it is never delivered twice.
//!
//! # Ordering
//! FIFO. Requeued messages return to their original position (ahead of younger ones), so only
//! redelivery reorders. Entries may carry a not-before time: a delayed publish
//! (`Broker::publish_in`) or a retry with a delay waits in the queue's schedule, ordered by due
//! time, and when due takes its place by publish order among the ready messages (ahead of those
//! published after it, as a requeued message does; RabbitMQ's delayed exchange and Sidekiq's
//! scheduled set put it at the back instead, which delays a due message behind a backlog). With several consumers, messages are handed out round robin, and handlers run
//! concurrently, so effects may complete out of order; where order matters use one consumer or
//! `single_active_consumer`, which hands everything to the oldest consumer and fails over to the next
//! in subscription order when it leaves.
//!
//! # Backpressure
//! `depth_max` bounds the ready messages and the scheduled ones together. When it is reached the queue's overflow policy applies:
//! `drop-head` drops (or dead-letters, reason `maxlen`) the oldest; `reject-publish` refuses the new
//! message and the publisher's confirm names the queue; `reject-publish-dlx` also dead-letters it;
//! `block` makes `publish` wait for room; with nothing ready, `drop-head` drops the scheduled
//! message due first. The latter three are enforced by publisher credits (a
//! semaphore of `depth_max` permits, taken by a publish and returned when the message leaves the ready
//! list), as RabbitMQ's credit flow between channels and queues. Requeued messages are never refused,
//! so the ready list may exceed `depth_max` by the deliveries in flight. Messages reach the queue
//! through its data inbox, a channel that the actor drains as a stream, up to [`INBOX_BATCH_MAX`] at a
//! time. Under the three credit policies every message in it holds a credit, so the credits bound it
//! (`depth_max`, less what is ready); a `drop-head` queue's inbox holds at most
//! [`DROP_HEAD_INBOX_MAX`], and a publisher finding it full waits (`publish`) or is refused
//! (`try_publish`). Dead letters from other queues enter without a credit and are bounded by what
//! those queues held. Control messages (subscriptions, settlements, stats) use the actor's
//! actix mailbox of [`CONTROL_MAILBOX_MAX`]. Deliveries in flight per subscriber are bounded by its prefetch (0 means up to
//! `depth_max`); a subscriber whose mailbox is full is skipped and its messages stay in the queue.
//!
//! # Durability
//! A queue declared `durable` (on a broker with a data directory) keeps a journal, a compacted stream
//! of the broker's log named `__queue.NAME` (see `journal.rs`): a publish appends the message's
//! enqueue record before the copy enters the queue, and is confirmed once the record is acked under
//! the queue's `fsync` policy (as a publish to a stream: `always` on disk, `interval` and `never` in
//! the page cache, which a kill -9 never loses). Each at-least-once delivery appends its delivery
//! count; a message that leaves (acked, rejected, dropped with a reason, or dead-lettered once its
//! copy is in the dead-letter queue) is tombstoned, without waiting for a sync. When the broker
//! starts, each durable queue takes back every message its journal holds before any publish or
//! subscription: in order, with its death history and delivery count (the next delivery is marked
//! redelivered), its time to live counted from its first enqueue; message ids continue past the
//! highest replayed and past the wall clock's nanoseconds since the Unix epoch, so that no new message
//! takes the id of one acked in an earlier process. A tombstone lost to a crash brings its message back once more (at least once);
//! an at-most-once durable queue tombstones a message as it hands it out. Deleting a durable queue
//! deletes its journal. Queues that are not durable never touch a journal.
//!
//! # Shutdown
//! Unsubscribing first stops deliveries to that subscriber, waits (up to a timeout) for what it holds
//! to be settled, then requeues whatever is still unacked (at-least-once) or counts it lost
//! (at-most-once). A queue with `expires_ms` is deleted once it has been without consumers that long;
//! one with `auto_delete` when its last consumer leaves (if it ever had one). A deleted queue is
//! unbound from every topic; its remaining messages (scheduled ones too) are counted as
//! `dropped.deleted`, not dead-lettered, as in RabbitMQ. At the broker's shutdown, scheduled messages
//! stay counted as `scheduled` (a durable queue keeps them, with their due times, for the next start).

mod actor;
mod inbox;
pub(crate) mod journal;
pub(crate) mod state;
mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use tokio::sync::Semaphore;

pub use crate::protocol::SettleError;
pub(crate) use actor::{QueueActor, Shared};
pub(crate) use inbox::{inbox, InboxReceiver, InboxSender, TrySendError};
pub(crate) use journal::{Journal, NO_SLOT};
pub use journal::{DURABLE_NAME_MAX, JOURNAL_PREFIX, JOURNAL_SEGMENT_BYTES};
pub(crate) use table::{InsertError, QueueTable};

use crate::ids::QueueId;
use crate::message::Message;
use crate::protocol::{Enqueue, Refuse};
pub(crate) use crate::protocol::{Stamp, TopicIndex};
use crate::stats::QueueStats;
use crate::topology::{Overflow, QueueSpec};

/// What a queue actor may ask of the broker around it, and nothing more: where its dead letters go,
/// and that it is gone. The broker's registry implements it; a queue holds it weakly, so that a
/// dropped broker is freed.
pub(crate) trait QueueHost: Send + Sync + 'static {
    /// The live queue named `name`, to pass a dead letter to.
    fn dead_letter_queue(&self, name: &str) -> Option<Arc<QueueHandle>>;
    /// The queue `id` has been deleted; these are its final counters.
    fn queue_deleted(&self, id: QueueId, stats: QueueStats);
}

/// The most messages a `drop-head` queue's data inbox holds (waiting to be enqueued); the inboxes of
/// the other policies are bounded by their publishers' credits.
pub const DROP_HEAD_INBOX_MAX: usize = 1024;
/// The most control messages (subscriptions, settlements, stats) a queue actor's mailbox holds.
pub const CONTROL_MAILBOX_MAX: usize = 1024;
/// The most inbox messages a queue takes in one turn before it dispatches.
pub const INBOX_BATCH_MAX: usize = 128;

/// A queue's counters kept outside its actor.
#[derive(Debug, Default)]
pub(crate) struct SideCounters {
    /// Publishes refused before reaching the actor (they never enter its mailbox).
    pub(crate) refused: AtomicU64,
    /// Deliveries whose payload a subscriber could not decode into its type (rejected).
    pub(crate) undecodable: AtomicU64,
    /// The same, per topic the message was published to: the broker's table, shared by its queues.
    pub(crate) topics: Arc<TopicTally>,
}

/// A count per topic, indexed by [`TopicIndex`]: the broker's topics are fixed when it starts, so
/// the table is one slice, read by `stats` and added to by subscribers without a lock.
#[derive(Debug, Default)]
pub(crate) struct TopicTally(Box<[AtomicU64]>);

impl TopicTally {
    /// A table for `topics` topics (at most [`TopicIndex::MAX`]).
    pub(crate) fn new(topics: usize) -> Self {
        TopicTally((0..topics.min(TopicIndex::MAX)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Counts one for `topic` (nothing for [`TopicIndex::NONE`]).
    pub(crate) fn add(&self, topic: TopicIndex) {
        if let Some(n) = self.0.get(usize::from(topic.0)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of `topic`.
    pub(crate) fn get(&self, topic: TopicIndex) -> u64 {
        self.0.get(usize::from(topic.0)).map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// What a queue did with an offered message.
#[derive(Debug)]
pub(crate) enum Offer {
    Accepted,
    /// Refused by the overflow policy (`reject-publish`, `reject-publish-dlx`).
    Refused,
    /// No room now (a full mailbox, or no credit under `block`); the message is handed back.
    Full(Arc<Message>),
    /// The queue has been deleted or shut down; the message is handed back.
    Closed(Arc<Message>),
}

/// The publishers' side of a queue: its one mailbox sender, shared by reference (a cloned `Addr` is a
/// new sender, and actix keeps the mailbox-full state per sender), and its credits.
#[derive(Debug)]
pub(crate) struct QueueHandle {
    pub(crate) id: QueueId,
    pub(crate) name: Arc<str>,
    /// The control mailbox (subscriptions, settlements, stats).
    pub(crate) addr: Addr<QueueActor>,
    /// The arbiter the queue (and its subscribers) live on.
    pub(crate) arbiter: actix::ArbiterHandle,
    /// The data inbox: messages for the queue.
    pub(crate) inbox: InboxSender,
    pub(crate) spec: QueueSpec,
    /// Publisher credits for the reject and block policies.
    pub(crate) credits: Option<Arc<Semaphore>>,
    /// Counted outside the actor: publishes refused before reaching it, payloads its subscribers
    /// could not decode.
    pub(crate) counters: Arc<SideCounters>,
    /// A durable queue's journal: publishers append a message's enqueue record before offering it.
    pub(crate) journal: Option<Arc<Journal>>,
}

impl QueueHandle {
    /// The bound of the queue's inbox: none where publishers' credits bound it (reject and block
    /// policies), [`DROP_HEAD_INBOX_MAX`] for drop-head queues.
    pub(crate) fn inbox_bound(spec: &QueueSpec) -> Option<usize> {
        match spec.overflow {
            Overflow::DropHead => Some(DROP_HEAD_INBOX_MAX),
            _ => None,
        }
    }

    pub(crate) fn credits_for(spec: &QueueSpec) -> Option<Arc<Semaphore>> {
        match spec.overflow {
            Overflow::DropHead => None,
            _ => Some(Arc::new(Semaphore::new(spec.depth_max))),
        }
    }

    /// Offers a message without waiting; `stamp` carries its journal slot in a durable queue
    /// ([`NO_SLOT`] otherwise), its due time and its topic.
    pub(crate) fn try_offer(&self, msg: Arc<Message>, stamp: Stamp) -> Offer {
        let credited = match self.take_credit() {
            Credit::Taken => true,
            Credit::NotNeeded => false,
            Credit::Missing if self.spec.overflow == Overflow::Block => return Offer::Full(msg),
            Credit::Missing => return self.refuse(msg),
        };
        self.send_now(msg, credited, stamp)
    }

    /// Offers a message, waiting for credit (`block`) or mailbox room.
    ///
    /// Cancellation: if the future is dropped while waiting, the message has not entered this queue.
    pub(crate) async fn offer(&self, msg: Arc<Message>, stamp: Stamp) -> Offer {
        let credited = match self.take_credit() {
            Credit::Taken => true,
            Credit::NotNeeded => false,
            Credit::Missing if self.spec.overflow == Overflow::Block => {
                let credits = self.credits.as_ref().expect("block queues have credits");
                match credits.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Offer::Closed(msg),
                }
                true
            }
            Credit::Missing => return self.refuse(msg),
        };
        match self.send_now(msg, credited, stamp) {
            Offer::Full(msg) => match self.inbox.send(Enqueue { msg, credited, stamp }).await {
                Ok(()) => Offer::Accepted,
                Err(back) => self.closed(back.msg, credited),
            },
            other => other,
        }
    }

    fn send_now(&self, msg: Arc<Message>, credited: bool, stamp: Stamp) -> Offer {
        match self.inbox.try_send(Enqueue { msg, credited, stamp }) {
            Ok(()) => Offer::Accepted,
            Err(TrySendError::Full(e)) => {
                self.return_credit(credited);
                Offer::Full(e.msg)
            }
            Err(TrySendError::Closed(back)) => self.closed(back.msg, credited),
        }
    }

    fn closed(&self, msg: Arc<Message>, credited: bool) -> Offer {
        self.return_credit(credited);
        Offer::Closed(msg)
    }

    fn refuse(&self, msg: Arc<Message>) -> Offer {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if self.spec.overflow == Overflow::RejectPublishDlx {
            // Best effort without waiting: with a full mailbox the publisher still learns of the refusal
            // from its confirm, so the message is not lost silently.
            let _ = self.addr.try_send(Refuse { msg });
        }
        Offer::Refused
    }

    /// Releases publishers waiting for credit (at shutdown or deletion): they find the queue closed.
    pub(crate) fn release_waiting_publishers(&self) {
        if let Some(credits) = &self.credits {
            credits.close();
        }
    }

    fn take_credit(&self) -> Credit {
        match &self.credits {
            None => Credit::NotNeeded,
            Some(credits) => match credits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    Credit::Taken
                }
                Err(_) => Credit::Missing,
            },
        }
    }

    fn return_credit(&self, credited: bool) {
        if let (true, Some(credits)) = (credited, &self.credits) {
            credits.add_permits(1);
        }
    }
}

enum Credit {
    Taken,
    NotNeeded,
    Missing,
}
