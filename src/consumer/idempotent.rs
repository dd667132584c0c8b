//! The idempotent consumer: a handler wrapper that de-duplicates deliveries by message id.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use super::dedup::{Begin, Claim, DedupStore};
use crate::{Delivery, Handler, Outcome};

/// What a delivery of an id in progress elsewhere gets: back to the queue, to be tried once the run
/// that holds it has finished.
const IN_PROGRESS: Outcome = Outcome::Nack { requeue: true };

/// Runs the inner handler once per message id, acking later copies without running it.
///
/// The id is recorded only when the inner handler returns [`Outcome::Ack`]; a copy of an id in
/// progress in another subscriber sharing the store is nacked with requeue. See the [module
/// docs](super#delivery-guarantees) for what this does and does not promise.
///
/// ```
/// use std::time::Duration;
/// use tubemail::consumer::{DedupStore, Idempotent};
/// use tubemail::{Broker, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
///
/// # actix::System::new().block_on(async {
/// tokio::time::pause();
/// let topology = Topology::new()
///     .topic("t", TopicSpec::new(TopicKind::Fanout))
///     .queue("q", QueueSpec::default().ack_timeout(Duration::from_secs(1)))
///     .bind("t", "q", "");
/// let broker = Broker::start(topology).unwrap();
/// let store = DedupStore::default();
/// let (effects, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let mut inner = Idempotent::new(store.clone(), move |d: Delivery<u32>| {
///     effects.send(*d).unwrap();
///     async { Outcome::Ack }
/// });
/// // The first ack is lost on its way (as if the process died just after the handler returned):
/// // the ack deadline redelivers the message, and the store recognises it.
/// broker
///     .subscribe("q", move |d: Delivery<u32>| {
///         let lost = !d.redelivered();
///         let run = tubemail::Handler::handle(&mut inner, d);
///         async move { if lost { run.await; Outcome::Defer } else { run.await } }
///     })
///     .await
///     .unwrap();
/// broker.publish("t", "", 7_u32).await.unwrap();
/// while store.stats().duplicates_skipped == 0 {
///     tokio::time::sleep(Duration::from_millis(100)).await;
/// }
/// assert_eq!(rx.recv().await, Some(7));
/// assert!(rx.try_recv().is_err(), "the effect ran once");
/// # });
/// ```
#[derive(Debug)]
pub struct Idempotent<H> {
    store: DedupStore,
    handler: H,
    forgets_on_restart: bool,
}

impl<H> Idempotent<H> {
    /// Wraps `handler`, remembering what it handled in `store`.
    pub fn new(store: DedupStore, handler: H) -> Self {
        Self { store, handler, forgets_on_restart: false }
    }

    /// A deliberately broken variant whose window lives and dies with the subscriber: it forgets every
    /// id when the subscriber restarts. The simulation's tests prove the checkers catch it. Only with
    /// the `broken` feature, which no application build enables.
    #[doc(hidden)]
    #[cfg(feature = "broken")]
    pub fn forgetting_on_restart(store: DedupStore, handler: H) -> Self {
        Self { store, handler, forgets_on_restart: true }
    }

    /// The store.
    pub fn store(&self) -> &DedupStore {
        &self.store
    }

    /// The inner handler.
    pub fn into_inner(self) -> H {
        self.handler
    }
}

impl<T: 'static, H: Handler<T>> Handler<T> for Idempotent<H> {
    type Future = IdempotentFuture<H::Future>;

    fn handle(&mut self, delivery: Delivery<T>) -> Self::Future {
        let step = match self.store.begin(delivery.id()) {
            // Should the handler panic before returning its future, unwinding drops the claim.
            Begin::Run(claim) => Step::Running { run: Box::pin(self.handler.handle(delivery)), claim },
            Begin::Duplicate => Step::Done(Outcome::Ack),
            Begin::InProgress => Step::Done(IN_PROGRESS),
        };
        IdempotentFuture { step }
    }

    fn restarted(&mut self) {
        if self.forgets_on_restart {
            self.store.forget_all();
        }
        self.handler.restarted();
    }
}

/// The future of an [`Idempotent`] handler: the inner handler's, or an outcome decided at once.
///
/// Dropping it before it completes releases the id unrecorded.
#[must_use = "futures do nothing unless polled"]
pub struct IdempotentFuture<F> {
    step: Step<F>,
}

enum Step<F> {
    /// The inner handler runs; the claim is finished with its outcome. Boxed so that the future is
    /// `Unpin` without unsafe pin projection.
    Running {
        run: Pin<Box<F>>,
        claim: Claim,
    },
    Done(Outcome),
}

impl<F> std::fmt::Debug for IdempotentFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("IdempotentFuture");
        match &self.step {
            Step::Running { claim, .. } => out.field("running", &claim.id()),
            Step::Done(outcome) => out.field("done", outcome),
        };
        out.finish()
    }
}

impl<F: Future<Output = Outcome>> Future for IdempotentFuture<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let outcome = match &mut this.step {
            Step::Running { run, .. } => ready!(run.as_mut().poll(cx)),
            Step::Done(outcome) => *outcome,
        };
        if let Step::Running { claim, .. } = std::mem::replace(&mut this.step, Step::Done(outcome)) {
            claim.finish(outcome);
        }
        Poll::Ready(outcome)
    }
}

/// [`Idempotent`] for a synchronous handler: the result is a handler for
/// [`Broker::subscribe_sync`](crate::Broker::subscribe_sync).
///
/// ```
/// use tubemail::consumer::{idempotent_sync, DedupStore};
/// use tubemail::{Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology};
///
/// # actix::System::new().block_on(async {
/// let topology = Topology::new()
///     .topic("t", TopicSpec::new(TopicKind::Fanout))
///     .queue("q", QueueSpec::default())
///     .bind("t", "q", "");
/// let broker = Broker::start(topology).unwrap();
/// let store = DedupStore::new(1_000);
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let handler = idempotent_sync(store.clone(), move |d: Delivery<u32>| {
///     tx.send(*d).unwrap();
///     Outcome::Ack
/// });
/// broker.subscribe_sync_with("q", SubscribeOptions::default(), handler).await.unwrap();
/// broker.publish("t", "", 1_u32).await.unwrap();
/// assert_eq!(rx.recv().await, Some(1));
/// assert_eq!(store.stats().recorded, 1);
/// # });
/// ```
pub fn idempotent_sync<T, F>(
    store: DedupStore,
    mut handler: F,
) -> impl FnMut(Delivery<T>) -> Outcome + Send + 'static
where
    T: 'static,
    F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
{
    move |delivery| match store.begin(delivery.id()) {
        Begin::Run(claim) => claim.finish(handler(delivery)),
        Begin::Duplicate => Outcome::Ack,
        Begin::InProgress => IN_PROGRESS,
    }
}
