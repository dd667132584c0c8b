//! Checkers over a [`History`]: was every message delivered as its queue promised?
//!
//! The vocabulary is Jepsen's total-queue checker, and each queue is judged by its own promise
//! ([`DeliveryMode`]): losses are allowed at most once, duplicates at least once.
//!
//! # Findings
//!
//! For each queue named in the [`Expectation`], and each message:
//!
//! - **lost**: expected in the queue and never accounted for by the end of the history. *Expected*:
//!   the publisher got a confirm naming the queue, or the message was dead-lettered into it (enqueued
//!   there after a dead-letter event in another queue). *Accounted*: acked there, dead-lettered from
//!   there, or dropped there for a reason in [`POLICY_DROP_REASONS`]; at most once, also delivered
//!   there, or dropped for a reason in [`AT_MOST_ONCE_DROP_REASONS`]. A violation at least once;
//!   reported, but allowed, at most once.
//! - **lost to a queue restart**: dropped with reason `queue_restart` and not otherwise accounted.
//!   No in-memory queue survives a restart, so these are counted in a class of their own
//!   ([`Report::lost_to_queue_restart`]), neither lost nor violations.
//! - **unexpected**: handled (a handler started) in the queue, although never published, or never
//!   enqueued in that queue. Always a violation.
//! - **duplicated**: a handler started more than once for the message in the queue. At most once,
//!   a violation when the handler started more often than the message was enqueued there (a
//!   publisher's retry after a lost confirm enqueues a second copy, and running each copy once keeps
//!   the promise); at least once, always allowed.
//! - **recovered**: handled although the publisher never learnt the outcome of its publish (its
//!   last word was a lost confirm). Allowed: Jepsen's "recovered".
//! - **reordered**, when asked: FIFO among first deliveries ([`QueueExpectation::fifo`]), or
//!   per-key order of first handler starts ([`QueueExpectation::per_key_order`]). Violations.
//!
//! # Order
//!
//! FIFO is judged on the queue's `deliver` events: the first delivery of each message must follow the
//! order in which it was enqueued, among the messages delivered at all (a message dropped or expired
//! before delivery leaves no gap), and redeliveries are free to reorder. A message enqueued twice (a
//! publisher's retry after a lost confirm) takes the place of the copy delivered first: the oldest
//! copy that was not dropped or dead-lettered before it. Per-key order is judged on first handler
//! starts against the order of first publishes, key by key.
//!
//! A queue at least once passes with no lost, no unexpected and no reordered; a queue at most once
//! with no violating duplicate, no unexpected and no reordered.
//!
//! # Reading a history
//!
//! The checkers go by the order of events in the history, never by their times, and take the history
//! as complete: a message still waiting in a queue when the history ends is lost, so record the run
//! until it has drained. They accept any history (events for unknown messages or queues, events out of
//! order) and never panic.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::history::{Event, History};
use tubemail::ids::MessageId;
#[cfg(test)]
use tubemail::probe::HandlerOutcome;
use tubemail::probe::{DropReason, FaultKind, What};
use tubemail::topology::DeliveryMode;

/// Drop reasons that a queue's own policy explains, allowed in every mode: the queue was full
/// (`overflow`, `maxlen`), the message expired, was rejected, passed its delivery limit, was in a
/// deleted queue, or would have cycled between dead-letter queues.
pub const POLICY_DROP_REASONS: &[DropReason] = &[
    DropReason::Overflow,
    DropReason::Maxlen,
    DropReason::Expired,
    DropReason::Rejected,
    DropReason::DeliveryLimit,
    DropReason::Deleted,
    DropReason::DeadLetterCycle,
];

/// Drop reasons that only an at-most-once queue allows: handed to a subscriber that died first, or
/// eaten by a fault on the way.
pub const AT_MOST_ONCE_DROP_REASONS: &[DropReason] = &[DropReason::LostAtMostOnce, DropReason::FaultDrop];

/// The drop reason of messages lost because their queue restarted.
pub const QUEUE_RESTART_REASON: DropReason = DropReason::QueueRestart;

/// What the run promised, per queue. Queues not named here are not judged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// Queues by name.
    pub queues: BTreeMap<String, QueueExpectation>,
}

impl Expectation {
    /// Judges nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges `name` by `expect`.
    pub fn queue(mut self, name: impl Into<String>, expect: QueueExpectation) -> Self {
        self.queues.insert(name.into(), expect);
        self
    }
}

/// The promise of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueExpectation {
    /// The delivery mode, which decides what is lost and what is duplicated.
    pub mode: DeliveryMode,
    /// Check that first deliveries follow enqueue order (a plain queue: only redelivery reorders).
    pub fifo: bool,
    /// Check that, for each routing key, first handler starts follow publish order (hash-routed
    /// queues, single active consumer).
    pub per_key_order: bool,
}

impl QueueExpectation {
    /// The promise of `mode`, with no order checked.
    pub fn new(mode: DeliveryMode) -> Self {
        Self { mode, fifo: false, per_key_order: false }
    }

    /// Also checks FIFO among first deliveries.
    pub fn with_fifo(self) -> Self {
        Self { fifo: true, ..self }
    }

    /// Also checks per-key order of first handler starts.
    pub fn with_per_key_order(self) -> Self {
        Self { per_key_order: true, ..self }
    }
}

/// The checkers' verdict on a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Counts per judged queue.
    pub queues: BTreeMap<String, QueueSummary>,
    /// Expected and never accounted for.
    pub lost: Vec<Finding>,
    /// Handled more than once.
    pub duplicated: Vec<Finding>,
    /// Handled although never published, or never enqueued in that queue.
    pub unexpected: Vec<Finding>,
    /// Handled although the publish outcome was unknown (informational).
    pub recovered: Vec<Finding>,
    /// Out of FIFO or per-key order.
    pub reordered: Vec<Finding>,
    /// Messages lost because their queue restarted, over every judged queue.
    pub lost_to_queue_restart: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Events in the history.
    pub events: u64,
}

/// Counts for one queue; each message counts at most once in each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// The queue's delivery mode.
    pub mode: DeliveryMode,
    /// Messages confirmed into the queue, or dead-lettered into it.
    pub expected: u64,
    /// Messages enqueued.
    pub enqueued: u64,
    /// Messages delivered at least once.
    pub delivered: u64,
    /// Messages whose handler started at least once.
    pub handled: u64,
    /// Messages whose handler returned after it started.
    pub completed: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered from the queue.
    pub dead_lettered: u64,
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Messages lost because the queue restarted.
    pub lost_to_queue_restart: u64,
}

/// One message in one queue that a checker has something to say about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which checker.
    pub kind: FindingKind,
    /// Whether it breaks the queue's promise.
    pub severity: Severity,
    /// The queue.
    pub queue: String,
    /// The message.
    pub msg: MessageId,
    /// What is wrong, in words.
    pub what: String,
    /// The message's events, in history order: those in this queue, those in no queue (publish,
    /// confirms, faults), and its dead letters from other queues (how it came here).
    pub trail: Vec<Event>,
}

/// The checkers, by what they find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// Expected and never accounted for.
    Lost,
    /// Handled more than once.
    Duplicated,
    /// Handled although never published or never enqueued.
    Unexpected,
    /// Handled although the publish outcome was unknown.
    Recovered,
    /// Out of FIFO or per-key order.
    Reordered,
}

/// Whether a finding breaks its queue's promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// It does: the run failed.
    Violation,
    /// It does not (a duplicate at least once, a loss at most once, a recovered message).
    Allowed,
}

impl Report {
    /// Whether no finding breaks its queue's promise.
    pub fn ok(&self) -> bool {
        self.first_violation().is_none()
    }

    /// Every finding that breaks its queue's promise: lost, then duplicated, unexpected and reordered;
    /// within each, by queue and then by the message's first event.
    pub fn violations(&self) -> Vec<&Finding> {
        self.findings().filter(|f| f.severity == Severity::Violation).collect()
    }

    /// The first of [`Report::violations`].
    pub fn first_violation(&self) -> Option<&Finding> {
        self.findings().find(|f| f.severity == Severity::Violation)
    }

    /// Every finding, in the order of [`Report::violations`], recovered ones before reordered ones.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.lost
            .iter()
            .chain(&self.duplicated)
            .chain(&self.unexpected)
            .chain(&self.recovered)
            .chain(&self.reordered)
    }
}

/// Judges `history` against `expect`. See the [module docs](self) for the rules.
///
/// ```
/// use tubemail::ids::MessageId;
/// use tubemail_sim::check::{check, Expectation, QueueExpectation};
/// use tubemail_sim::history::History;
/// use tubemail_sim::{HandlerOutcome, What};
/// use tubemail::topology::DeliveryMode;
///
/// let (msg, queue) = (MessageId(1), "billing".to_string());
/// let mut h = History::new();
/// h.push(0, What::Publish { msg, key: "orders.1".into(), attempt: 1 });
/// h.push(1, What::Enqueue { msg, queue: queue.clone() });
/// h.push(2, What::Confirm { msg, queues: vec![queue.clone()], refused: vec![] });
/// let expect = Expectation::new().queue("billing", QueueExpectation::new(DeliveryMode::AtLeastOnce));
/// assert!(!check(&h, &expect).ok()); // confirmed, never acked: lost
///
/// h.push(3, What::Deliver { msg, queue: queue.clone(), consumer: 1, tag: 1, attempt: 1 });
/// h.push(4, What::HandlerStart { msg, queue: queue.clone(), consumer: 1, tag: 1 });
/// h.push(5, What::HandlerEnd { msg, queue: queue.clone(), consumer: 1, tag: 1, outcome: HandlerOutcome::Ack });
/// h.push(6, What::Ack { msg, queue, consumer: 1, tag: 1 });
/// assert!(check(&h, &expect).ok());
/// ```
pub fn check(history: &History, expect: &Expectation) -> Report {
    let events = history.events();
    let messages = by_message(events);
    let mut report =
        Report { faults: history.fault_counts(), events: events.len() as u64, ..Report::default() };
    for (queue, qe) in &expect.queues {
        let facts: Vec<Facts<'_>> =
            messages.iter().map(|(msg, at)| Facts::of(events, *msg, at, queue)).collect();
        let mut summary = QueueSummary { mode: qe.mode, ..QueueSummary::default() };
        for f in &facts {
            judge(&mut report, &mut summary, f, qe.mode);
        }
        // A queue restart loses the queue's state, order included: a reordering across one is allowed.
        let restarts: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(&e.what, What::QueueRestart { queue: q } if q == queue))
            .map(|(i, _)| i)
            .collect();
        if qe.fifo {
            fifo(&mut report, &facts, &restarts);
        }
        if qe.per_key_order {
            per_key_order(&mut report, &facts, &restarts);
        }
        report.lost_to_queue_restart += summary.lost_to_queue_restart;
        report.queues.insert(queue.clone(), summary);
    }
    report
}

/// The indices of each message's events, messages in order of their first event.
fn by_message(events: &[Event]) -> Vec<(MessageId, Vec<usize>)> {
    let mut at: BTreeMap<MessageId, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(msg) = e.what.msg() {
            at.entry(msg).or_default().push(i);
        }
    }
    let mut messages: Vec<_> = at.into_iter().collect();
    messages.sort_by_key(|(_, at)| at.first().copied());
    messages
}

/// What one message did, as seen from one queue.
#[derive(Debug)]
struct Facts<'h> {
    msg: MessageId,
    queue: &'h str,
    events: &'h [Event],
    at: &'h [usize],
    published_at: Option<usize>,
    key: Option<&'h str>,
    confirmed_here: bool,
    outcome_unknown: bool,
    dead_lettered_elsewhere: bool,
    enqueues: u64,
    /// Enqueues of copies not yet delivered, dropped or dead-lettered, until the first delivery.
    copies: VecDeque<usize>,
    /// The enqueue of the copy that was delivered first: its place in FIFO order.
    fifo_rank: Option<usize>,
    first_deliver: Option<usize>,
    starts: u64,
    first_start: Option<usize>,
    completed: bool,
    acked: bool,
    dead_lettered: bool,
    drops: Vec<DropReason>,
}

impl<'h> Facts<'h> {
    fn of(events: &'h [Event], msg: MessageId, at: &'h [usize], queue: &'h str) -> Self {
        let mut f = Facts {
            msg,
            queue,
            events,
            at,
            published_at: None,
            key: None,
            confirmed_here: false,
            outcome_unknown: false,
            dead_lettered_elsewhere: false,
            enqueues: 0,
            copies: VecDeque::new(),
            fifo_rank: None,
            first_deliver: None,
            starts: 0,
            first_start: None,
            completed: false,
            acked: false,
            dead_lettered: false,
            drops: Vec::new(),
        };
        for &i in at {
            let Some(e) = events.get(i) else { continue };
            f.note(i, &e.what);
        }
        f
    }

    fn note(&mut self, i: usize, what: &'h What) {
        let here = what.queue() == Some(self.queue);
        match what {
            What::Publish { key, .. } if self.published_at.is_none() => {
                self.published_at = Some(i);
                self.key = Some(key);
            }
            What::Confirm { queues, .. } => {
                self.confirmed_here |= queues.iter().any(|q| q == self.queue);
                self.outcome_unknown = false;
            }
            What::ConfirmLost { .. } => self.outcome_unknown = true,
            What::Enqueue { .. } if here => {
                self.enqueues += 1;
                if self.first_deliver.is_none() {
                    self.copies.push_back(i);
                }
            }
            What::Deliver { .. } if here && self.first_deliver.is_none() => {
                self.first_deliver = Some(i);
                self.fifo_rank = self.copies.front().copied();
            }
            What::HandlerStart { .. } if here => {
                self.starts += 1;
                self.first_start.get_or_insert(i);
            }
            What::HandlerEnd { .. } if here => self.completed |= self.first_start.is_some(),
            What::Ack { .. } if here => self.acked = true,
            What::DeadLetter { .. } if here => {
                self.dead_lettered = true;
                self.copy_left();
            }
            What::DeadLetter { .. } => self.dead_lettered_elsewhere = true,
            What::Drop { reason, .. } if here => {
                self.drops.push(*reason);
                self.copy_left();
            }
            _ => {}
        }
    }

    /// A copy left the queue undelivered (dropped or dead-lettered): the oldest, as the queue is FIFO.
    fn copy_left(&mut self) {
        if self.first_deliver.is_none() {
            self.copies.pop_front();
        }
    }

    fn expected(&self) -> bool {
        self.confirmed_here || (self.dead_lettered_elsewhere && self.enqueues > 0)
    }

    fn accounted(&self, mode: DeliveryMode) -> bool {
        let allowed = |r: &DropReason| {
            POLICY_DROP_REASONS.contains(r)
                || (mode == DeliveryMode::AtMostOnce && AT_MOST_ONCE_DROP_REASONS.contains(r))
        };
        self.acked
            || self.dead_lettered
            || self.drops.iter().any(allowed)
            || (mode == DeliveryMode::AtMostOnce && self.first_deliver.is_some())
    }

    fn lost_to_restart(&self, mode: DeliveryMode) -> bool {
        !self.accounted(mode) && self.drops.contains(&QUEUE_RESTART_REASON)
    }

    fn finding(&self, kind: FindingKind, severity: Severity, what: String) -> Finding {
        Finding { kind, severity, queue: self.queue.to_owned(), msg: self.msg, what, trail: self.trail() }
    }

    fn trail(&self) -> Vec<Event> {
        let belongs = |e: &&Event| match e.what.queue() {
            None => true,
            Some(q) => q == self.queue || matches!(e.what, What::DeadLetter { .. }),
        };
        self.at.iter().filter_map(|&i| self.events.get(i)).filter(belongs).cloned().collect()
    }
}

fn judge(report: &mut Report, summary: &mut QueueSummary, f: &Facts<'_>, mode: DeliveryMode) {
    count(summary, f, mode);
    let q = f.queue;
    if f.expected() && !f.accounted(mode) && !f.lost_to_restart(mode) {
        let severity =
            if mode == DeliveryMode::AtLeastOnce { Severity::Violation } else { Severity::Allowed };
        let how = if f.confirmed_here { "confirmed into" } else { "dead-lettered into" };
        let what = match f.drops.as_slice() {
            [] => format!("{how} {q}, never acked, dead-lettered or dropped by policy there"),
            drops => format!(
                "{how} {q}, then dropped there ({}), which {} does not allow",
                drops.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "),
                mode.as_str()
            ),
        };
        report.lost.push(f.finding(FindingKind::Lost, severity, what));
    }
    if f.starts > 0 && f.published_at.is_none() {
        let what = format!("handled in {q} but never published");
        report.unexpected.push(f.finding(FindingKind::Unexpected, Severity::Violation, what));
    } else if f.starts > 0 && f.enqueues == 0 {
        let what = format!("handled in {q} but never enqueued there");
        report.unexpected.push(f.finding(FindingKind::Unexpected, Severity::Violation, what));
    }
    if f.starts > 1 {
        let over = f.starts > f.enqueues.max(1);
        let severity =
            if mode == DeliveryMode::AtMostOnce && over { Severity::Violation } else { Severity::Allowed };
        let what = format!("handler started {} times in {q}, enqueued there {} times", f.starts, f.enqueues);
        report.duplicated.push(f.finding(FindingKind::Duplicated, severity, what));
    }
    if f.starts > 0 && f.outcome_unknown {
        let what = format!("handled in {q} although the publisher's confirm was lost");
        report.recovered.push(f.finding(FindingKind::Recovered, Severity::Allowed, what));
    }
}

fn count(s: &mut QueueSummary, f: &Facts<'_>, mode: DeliveryMode) {
    let one = |b: bool| u64::from(b);
    s.expected += one(f.expected());
    s.enqueued += one(f.enqueues > 0);
    s.delivered += one(f.first_deliver.is_some());
    s.handled += one(f.starts > 0);
    s.completed += one(f.completed);
    s.acked += one(f.acked);
    s.dead_lettered += one(f.dead_lettered);
    s.lost_to_queue_restart += one(f.lost_to_restart(mode));
    let mut reasons = f.drops.clone();
    reasons.sort_unstable();
    reasons.dedup();
    for r in reasons {
        *s.dropped.entry(r).or_insert(0) += 1;
    }
}

/// FIFO among first deliveries: counting only messages enqueued and delivered in the queue, first
/// deliveries follow the enqueues of the copies delivered.
fn fifo(report: &mut Report, facts: &[Facts<'_>], restarts: &[usize]) {
    let order = facts.iter().filter_map(|f| Some((f.first_deliver?, f.fifo_rank?, f)));
    for (f, older) in overtakers(order) {
        let what = format!(
            "first delivered in {} ahead of msg={}, which was enqueued there before it (fifo)",
            f.queue, older.msg.0
        );
        let severity = across_restart(older, f.first_deliver, restarts);
        report.reordered.push(f.finding(FindingKind::Reordered, severity, what));
    }
}

/// A violation, unless a queue restart came between the older message's first delivery (or its
/// enqueue, when it was never delivered before) and the newer message's overtaking event.
fn across_restart(older: &Facts<'_>, newer_at: Option<usize>, restarts: &[usize]) -> Severity {
    let (Some(older_at), Some(newer_at)) = (older.first_deliver.or(older.first_start), newer_at) else {
        return Severity::Violation;
    };
    let (from, to) = (older_at.min(newer_at), older_at.max(newer_at));
    if restarts.iter().any(|&r| from < r && r < to) {
        Severity::Allowed
    } else {
        Severity::Violation
    }
}

/// Per-key order: for each routing key, first handler starts follow publish order.
fn per_key_order(report: &mut Report, facts: &[Facts<'_>], restarts: &[usize]) {
    let mut keys: BTreeMap<&str, Vec<(usize, usize, &Facts<'_>)>> = BTreeMap::new();
    for f in facts {
        if let (Some(start), Some(published), Some(key)) = (f.first_start, f.published_at, f.key) {
            keys.entry(key).or_default().push((start, published, f));
        }
    }
    let mut found: Vec<(usize, Finding)> = Vec::new();
    for (key, order) in keys {
        for (f, older) in overtakers(order) {
            let what = format!(
                "first handled in {} ahead of msg={}, published before it with the same key {key:?}",
                f.queue, older.msg.0
            );
            let at = f.first_start.unwrap_or(usize::MAX);
            let severity = across_restart(older, f.first_start, restarts);
            found.push((at, f.finding(FindingKind::Reordered, severity, what)));
        }
    }
    found.sort_by_key(|(at, _)| *at);
    report.reordered.extend(found.into_iter().map(|(_, f)| f));
}

/// Given `(happened, should_follow, item)`, the items that happened ahead of an item that should
/// have come first, in the order they happened, each with the earliest item it overtook.
fn overtakers<'a, T>(order: impl IntoIterator<Item = (usize, usize, &'a T)>) -> Vec<(&'a T, &'a T)> {
    let mut order: Vec<_> = order.into_iter().collect();
    order.sort_by_key(|(happened, rank, _)| (*happened, *rank));
    let mut out = Vec::new();
    let mut earliest_after: Option<(usize, &T)> = None;
    for (_, rank, item) in order.into_iter().rev() {
        if let Some((older_rank, older)) = earliest_after {
            if older_rank < rank {
                out.push((item, older));
            }
        }
        if earliest_after.is_none_or(|(r, _)| rank < r) {
            earliest_after = Some((rank, item));
        }
    }
    out.reverse();
    out
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            FindingKind::Lost => "lost",
            FindingKind::Duplicated => "duplicated",
            FindingKind::Unexpected => "unexpected",
            FindingKind::Recovered => "recovered",
            FindingKind::Reordered => "reordered",
        })
    }
}

/// `lost: msg=7 in billing: confirmed into billing, ...`, then the trail, one event per line.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed = if self.severity == Severity::Allowed { " (allowed)" } else { "" };
        writeln!(f, "{}{allowed}: msg={} in {}: {}", self.kind, self.msg.0, self.queue, self.what)?;
        self.trail.iter().try_for_each(|e| writeln!(f, "  {e}"))
    }
}

fn dropped(by_reason: &BTreeMap<DropReason, u64>) -> String {
    let total: u64 = by_reason.values().sum();
    let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r}={n}")).collect();
    if reasons.is_empty() {
        "0".to_owned()
    } else {
        format!("{total} ({})", reasons.join(" "))
    }
}

/// `ok` or `FAILED`, the first violation with its trail, then one line per queue and the faults.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let violations = self.violations().len();
        match self.first_violation() {
            None => writeln!(f, "ok: no violations in {} events", self.events)?,
            Some(first) => {
                let noun = if violations == 1 { "violation" } else { "violations" };
                writeln!(f, "FAILED: {violations} {noun} in {} events; the first:", self.events)?;
                write!(f, "{first}")?;
            }
        }
        for (name, q) in &self.queues {
            let findings = |kind| self.findings().filter(|x| x.kind == kind && &x.queue == name).count();
            writeln!(
                f,
                "queue {name} ({}): expected {}, enqueued {}, delivered {}, handled {}, acked {}, \
                 dead-lettered {}, dropped {}, lost to queue restart {}; lost {}, duplicated {}, \
                 unexpected {}, recovered {}, reordered {}",
                q.mode.as_str(),
                q.expected,
                q.enqueued,
                q.delivered,
                q.handled,
                q.acked,
                q.dead_lettered,
                dropped(&q.dropped),
                q.lost_to_queue_restart,
                findings(FindingKind::Lost),
                findings(FindingKind::Duplicated),
                findings(FindingKind::Unexpected),
                findings(FindingKind::Recovered),
                findings(FindingKind::Reordered),
            )?;
        }
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
        writeln!(f, "faults: {}", if faults.is_empty() { "none".to_owned() } else { faults.join(" ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tubemail::message::DeathReason;

    /// A history under construction, one microsecond per event.
    #[derive(Default)]
    struct H(History);

    fn m(id: u64) -> MessageId {
        MessageId(id)
    }

    impl H {
        fn ev(mut self, what: What) -> Self {
            let at = self.0.len() as u64;
            self.0.push(at, what);
            self
        }
        fn publish(self, id: u64, key: &str) -> Self {
            self.ev(What::Publish { msg: m(id), key: key.into(), attempt: 1 })
        }
        fn confirm(self, id: u64, queues: &[&str]) -> Self {
            let queues = queues.iter().map(|q| q.to_string()).collect();
            self.ev(What::Confirm { msg: m(id), queues, refused: vec![] })
        }
        fn enqueue(self, id: u64, q: &str) -> Self {
            self.ev(What::Enqueue { msg: m(id), queue: q.into() })
        }
        /// Published with `key`, enqueued in `q` and confirmed.
        fn sent(self, id: u64, key: &str, q: &str) -> Self {
            self.publish(id, key).enqueue(id, q).confirm(id, &[q])
        }
        fn deliver(self, id: u64, q: &str) -> Self {
            self.ev(What::Deliver { msg: m(id), queue: q.into(), consumer: 1, tag: id, attempt: 1 })
        }
        fn start(self, id: u64, q: &str) -> Self {
            self.ev(What::HandlerStart { msg: m(id), queue: q.into(), consumer: 1, tag: id })
        }
        fn end(self, id: u64, q: &str) -> Self {
            self.ev(What::HandlerEnd {
                msg: m(id),
                queue: q.into(),
                consumer: 1,
                tag: id,
                outcome: HandlerOutcome::Ack,
            })
        }
        fn ack(self, id: u64, q: &str) -> Self {
            self.ev(What::Ack { msg: m(id), queue: q.into(), consumer: 1, tag: id })
        }
        /// Delivered, handled and acked.
        fn handled(self, id: u64, q: &str) -> Self {
            self.deliver(id, q).start(id, q).end(id, q).ack(id, q)
        }
        fn drop(self, id: u64, q: &str, reason: DropReason) -> Self {
            self.ev(What::Drop { msg: m(id), queue: q.into(), reason })
        }
        fn dead_letter(self, id: u64, q: &str) -> Self {
            self.ev(What::DeadLetter { msg: m(id), queue: q.into(), reason: DeathReason::Rejected })
        }
        fn check(&self, expect: &Expectation) -> Report {
            check(&self.0, expect)
        }
    }

    fn alo() -> Expectation {
        Expectation::new().queue("q", QueueExpectation::new(DeliveryMode::AtLeastOnce))
    }

    fn amo() -> Expectation {
        Expectation::new().queue("q", QueueExpectation::new(DeliveryMode::AtMostOnce))
    }

    fn msgs(findings: &[Finding]) -> Vec<u64> {
        findings.iter().map(|f| f.msg.0).collect()
    }

    #[test]
    fn a_confirmed_message_must_be_acked_at_least_once() {
        let sent = H::default().sent(1, "k", "q").deliver(1, "q").start(1, "q").end(1, "q");
        let report = sent.check(&alo());
        assert_eq!(msgs(&report.lost), vec![1]);
        assert_eq!(report.lost[0].severity, Severity::Violation);
        assert!(!report.ok());
        let acked = sent.ack(1, "q").check(&alo());
        assert!(acked.ok(), "{acked}");
        assert!(acked.lost.is_empty());
    }

    #[test]
    fn a_message_never_delivered_at_most_once_is_lost_but_allowed() {
        let sent = H::default().sent(1, "k", "q");
        let report = sent.check(&amo());
        assert_eq!(msgs(&report.lost), vec![1]);
        assert_eq!(report.lost[0].severity, Severity::Allowed);
        assert!(report.ok(), "{report}");
        assert!(sent.deliver(1, "q").check(&amo()).lost.is_empty(), "delivered counts at most once");
    }

    #[test]
    fn policy_drops_account_in_every_mode() {
        for &reason in POLICY_DROP_REASONS {
            for expect in [alo(), amo()] {
                let report = H::default().sent(1, "k", "q").drop(1, "q", reason).check(&expect);
                assert!(report.lost.is_empty(), "{reason}: {report}");
                assert_eq!(report.queues["q"].dropped.get(&reason), Some(&1));
            }
        }
    }

    #[test]
    fn at_most_once_losses_are_lost_at_least_once() {
        for &reason in AT_MOST_ONCE_DROP_REASONS {
            let h = H::default().sent(1, "k", "q").drop(1, "q", reason);
            let report = h.check(&alo());
            assert_eq!(msgs(&report.lost), vec![1], "{reason}");
            assert!(report.lost[0].what.contains(reason.as_str()), "{}", report.lost[0].what);
            let at_most_once = h.check(&amo());
            assert!(at_most_once.lost.is_empty(), "{reason}: {at_most_once}");
        }
    }

    #[test]
    fn queue_restart_losses_have_their_own_class() {
        for expect in [alo(), amo()] {
            let report = H::default().sent(1, "k", "q").drop(1, "q", QUEUE_RESTART_REASON).check(&expect);
            assert!(report.lost.is_empty(), "{report}");
            assert!(report.ok());
            assert_eq!(report.lost_to_queue_restart, 1);
            assert_eq!(report.queues["q"].lost_to_queue_restart, 1);
        }
        let acked_copy = H::default().sent(1, "k", "q").handled(1, "q").drop(1, "q", QUEUE_RESTART_REASON);
        assert_eq!(acked_copy.check(&alo()).lost_to_queue_restart, 0, "an acked message was not lost");
    }

    #[test]
    fn dead_letters_are_accounted_where_they_died_and_expected_where_they_went() {
        let both = Expectation::new()
            .queue("q", QueueExpectation::new(DeliveryMode::AtLeastOnce))
            .queue("dlq", QueueExpectation::new(DeliveryMode::AtLeastOnce));
        let h = H::default().sent(1, "k", "q").deliver(1, "q").dead_letter(1, "q").enqueue(1, "dlq");
        let report = h.check(&both);
        assert_eq!(msgs(&report.lost), vec![1]);
        assert_eq!(report.lost[0].queue, "dlq");
        assert!(report.lost[0].what.starts_with("dead-lettered into dlq"), "{}", report.lost[0].what);
        assert_eq!(report.queues["dlq"].expected, 1);
        assert_eq!(report.queues["q"].dead_lettered, 1);
        assert!(h.handled(1, "dlq").check(&both).ok());
    }

    #[test]
    fn only_confirmed_queues_expect_a_message() {
        let refused = H::default().publish(1, "k").ev(What::Confirm {
            msg: m(1),
            queues: vec!["other".into()],
            refused: vec!["q".into()],
        });
        assert!(refused.check(&alo()).lost.is_empty());
        let enqueued_unconfirmed = H::default().publish(1, "k").enqueue(1, "q");
        assert!(enqueued_unconfirmed.check(&alo()).lost.is_empty());
        let from_nowhere = H::default().publish(1, "k").enqueue(1, "dlq");
        let dlq = Expectation::new().queue("dlq", QueueExpectation::new(DeliveryMode::AtLeastOnce));
        assert!(from_nowhere.check(&dlq).lost.is_empty(), "an enqueue alone does not expect it");
    }

    #[test]
    fn handling_what_was_never_published_or_enqueued_is_unexpected() {
        let unpublished = H::default().enqueue(1, "q").deliver(1, "q").start(1, "q").check(&amo());
        assert_eq!(msgs(&unpublished.unexpected), vec![1]);
        assert!(unpublished.unexpected[0].what.contains("never published"));
        assert!(!unpublished.ok());
        let elsewhere = H::default().sent(1, "k", "other").deliver(1, "q").start(1, "q").check(&alo());
        assert_eq!(msgs(&elsewhere.unexpected), vec![1]);
        assert!(elsewhere.unexpected[0].what.contains("never enqueued"));
        let fine = H::default().sent(1, "k", "q").handled(1, "q").check(&alo());
        assert!(fine.unexpected.is_empty());
        let delivered_only = H::default().deliver(1, "q").check(&alo());
        assert!(delivered_only.unexpected.is_empty(), "unexpected means handled");
    }

    #[test]
    fn duplicates_break_at_most_once_only() {
        let twice = H::default().sent(1, "k", "q").handled(1, "q").start(1, "q");
        let at_most_once = twice.check(&amo());
        assert_eq!(msgs(&at_most_once.duplicated), vec![1]);
        assert_eq!(at_most_once.duplicated[0].severity, Severity::Violation);
        assert!(!at_most_once.ok());
        let at_least_once = twice.check(&alo());
        assert_eq!(msgs(&at_least_once.duplicated), vec![1]);
        assert_eq!(at_least_once.duplicated[0].severity, Severity::Allowed);
        assert!(at_least_once.ok(), "{at_least_once}");
        let once = H::default().sent(1, "k", "q").handled(1, "q").check(&amo());
        assert!(once.duplicated.is_empty());
    }

    #[test]
    fn a_retried_publish_may_run_once_per_copy_at_most_once() {
        let h = H::default()
            .publish(1, "k")
            .enqueue(1, "q")
            .ev(What::ConfirmLost { msg: m(1) })
            .ev(What::Publish { msg: m(1), key: "k".into(), attempt: 2 })
            .enqueue(1, "q")
            .confirm(1, &["q"])
            .handled(1, "q")
            .handled(1, "q");
        let report = h.check(&amo());
        assert_eq!(report.duplicated.len(), 1);
        assert_eq!(report.duplicated[0].severity, Severity::Allowed);
        assert!(report.ok(), "{report}");
        assert!(!h.start(1, "q").check(&amo()).ok(), "three runs of two copies");
    }

    #[test]
    fn handled_after_a_lost_confirm_is_recovered() {
        let lost_confirm = H::default().publish(1, "k").enqueue(1, "q").ev(What::ConfirmLost { msg: m(1) });
        let report = lost_confirm.check(&alo());
        assert!(report.lost.is_empty(), "not confirmed, so not expected");
        assert!(report.recovered.is_empty(), "not handled");
        let handled = lost_confirm.handled(1, "q");
        let report = handled.check(&alo());
        assert_eq!(msgs(&report.recovered), vec![1]);
        assert_eq!(report.recovered[0].severity, Severity::Allowed);
        assert!(report.ok());
        let confirmed_later = handled.confirm(1, &["q"]).check(&alo());
        assert!(confirmed_later.recovered.is_empty());
    }

    #[test]
    fn fifo_judges_first_deliveries_against_enqueue_order() {
        let fifo =
            Expectation::new().queue("q", QueueExpectation::new(DeliveryMode::AtLeastOnce).with_fifo());
        let base = H::default().sent(1, "a", "q").sent(2, "b", "q").sent(3, "c", "q");
        let in_order = base.0.clone();
        let in_order = H(in_order).handled(1, "q").handled(2, "q").deliver(1, "q").handled(3, "q");
        assert!(in_order.check(&fifo).ok(), "a redelivery is not a first delivery");
        let swapped = H(base.0.clone()).handled(2, "q").handled(1, "q").handled(3, "q");
        let report = swapped.check(&fifo);
        assert_eq!(msgs(&report.reordered), vec![2]);
        assert!(report.reordered[0].what.contains("ahead of msg=1"), "{}", report.reordered[0].what);
        assert!(!report.ok());
        assert!(swapped.check(&alo()).reordered.is_empty(), "only when asked");
        let head_dropped = H(base.0).drop(1, "q", DropReason::Overflow).handled(2, "q").handled(3, "q");
        assert!(head_dropped.check(&fifo).ok(), "only delivered messages count");
    }

    #[test]
    fn fifo_places_a_retried_message_where_its_delivered_copy_was() {
        let fifo =
            Expectation::new().queue("q", QueueExpectation::new(DeliveryMode::AtLeastOnce).with_fifo());
        let retry = |h: H, id: u64| {
            h.ev(What::ConfirmLost { msg: m(id) })
                .ev(What::Publish { msg: m(id), key: "k".into(), attempt: 2 })
                .enqueue(id, "q")
                .confirm(id, &["q"])
        };
        // The first copy of 1 is lost in a restart; its retry comes after 2 and is delivered after it.
        let restarted = H::default().sent(1, "k", "q").drop(1, "q", QUEUE_RESTART_REASON).sent(2, "k", "q");
        let restarted = retry(restarted, 1).handled(2, "q").handled(1, "q");
        assert!(restarted.check(&fifo).ok(), "{}", restarted.check(&fifo));
        // The first copy of 1 is delivered first, while its retry waits behind 2.
        let both = retry(H::default().sent(1, "k", "q").sent(2, "k", "q"), 1);
        assert!(both.handled(1, "q").handled(2, "q").handled(1, "q").check(&fifo).ok());
        // Without the restart, the first copy of 1 was older than 2 and should have gone first.
        let skipped =
            retry(H::default().sent(1, "k", "q").sent(2, "k", "q"), 1).handled(2, "q").handled(1, "q");
        assert_eq!(msgs(&skipped.check(&fifo).reordered), vec![2]);
    }

    #[test]
    fn per_key_order_judges_first_handler_starts_against_publish_order() {
        let keyed = Expectation::new()
            .queue("q", QueueExpectation::new(DeliveryMode::AtLeastOnce).with_per_key_order());
        let base = H::default().sent(1, "a", "q").sent(2, "b", "q").sent(3, "a", "q");
        let other_key_first = H(base.0.clone()).handled(2, "q").handled(1, "q").handled(3, "q");
        assert!(other_key_first.check(&keyed).ok(), "keys are independent");
        let same_key_swapped = H(base.0).handled(3, "q").handled(1, "q").handled(2, "q");
        let report = same_key_swapped.check(&keyed);
        assert_eq!(msgs(&report.reordered), vec![3]);
        assert!(report.reordered[0].what.contains("ahead of msg=1"), "{}", report.reordered[0].what);
        assert!(report.reordered[0].what.contains("\"a\""), "{}", report.reordered[0].what);
    }

    #[test]
    fn overtakers_name_the_earliest_item_overtaken() {
        // Items happened in the order d, b, c, a (by their first field); they should follow a, b, c, d.
        let (a, b, c, d) = ('a', 'b', 'c', 'd');
        let order = [(3, 0, &a), (1, 1, &b), (2, 2, &c), (0, 3, &d)];
        let out = overtakers(order);
        assert_eq!(out, vec![(&d, &a), (&b, &a), (&c, &a)]);
        assert!(overtakers([(0, 0, &a), (1, 1, &b)]).is_empty());
    }

    #[test]
    fn only_named_queues_are_judged() {
        let h = H::default().sent(1, "k", "elsewhere");
        let report = h.check(&alo());
        assert!(report.ok());
        assert_eq!(report.queues.keys().collect::<Vec<_>>(), vec!["q"]);
        let elsewhere =
            Expectation::new().queue("elsewhere", QueueExpectation::new(DeliveryMode::AtLeastOnce));
        assert!(!h.check(&elsewhere).ok());
    }

    #[test]
    fn trails_hold_the_message_in_that_queue_and_how_it_got_there() {
        let two = Expectation::new().queue("dlq", QueueExpectation::new(DeliveryMode::AtLeastOnce));
        let h = H::default()
            .publish(1, "k")
            .enqueue(1, "q")
            .enqueue(1, "other")
            .confirm(1, &["q", "other"])
            .handled(1, "other")
            .enqueue(2, "dlq")
            .dead_letter(1, "q")
            .enqueue(1, "dlq");
        let report = h.check(&two);
        let names: Vec<&str> = report.lost[0].trail.iter().map(|e| e.what.name()).collect();
        assert_eq!(names, vec!["publish", "confirm", "dead_letter", "enqueue"]);
    }

    #[test]
    fn summaries_count_messages_once() {
        let h = H::default().sent(1, "k", "q").handled(1, "q").handled(1, "q").sent(2, "k", "q").drop(
            2,
            "q",
            DropReason::Expired,
        );
        let s = &h.check(&alo()).queues["q"];
        let counts = (s.expected, s.enqueued, s.delivered, s.handled, s.completed, s.acked);
        assert_eq!(counts, (2, 2, 1, 1, 1, 1));
        assert_eq!(s.dropped.get(&DropReason::Expired), Some(&1));
    }

    #[test]
    fn events_out_of_order_do_not_confuse_the_counts() {
        let h = H::default().end(1, "q").ack(1, "q").start(1, "q").enqueue(1, "q").publish(1, "k");
        let report = h.check(&alo());
        assert_eq!(report.queues["q"].completed, 0, "the handler ended before it started");
        assert!(report.unexpected.is_empty(), "published and enqueued, if late");
    }

    #[test]
    fn the_report_names_the_first_violation_and_its_trail() {
        let report = H::default().sent(1, "k", "q").sent(2, "k", "q").handled(2, "q").check(&alo());
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "FAILED: 1 violation in 10 events; the first:");
        assert!(lines[1].starts_with("lost: msg=1 in q: confirmed into q"), "{text}");
        assert_eq!(lines[2], "       0.000ms publish msg=1 key=\"k\" attempt=1");
        assert_eq!(lines[3], "       0.001ms enqueue msg=1 queue=q");
        assert!(lines[5].starts_with("queue q (at-least-once): expected 2"), "{text}");
        assert_eq!(report.first_violation().map(|f| f.msg), Some(m(1)));
        let ok = H::default().sent(1, "k", "q").handled(1, "q").check(&alo()).to_string();
        assert!(ok.starts_with("ok: no violations in 7 events\n"), "{ok}");
    }
}
