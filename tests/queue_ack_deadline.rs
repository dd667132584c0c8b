//! The ack deadline (JetStream's AckWait): a delivery not settled within `ack_timeout` is redelivered,
//! marked redelivered, and not before.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tubemail::queue::SettleError;
use tubemail::{AckError, Acker, Broker, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);

struct Seen {
    value: u32,
    redelivered: bool,
    count: u32,
    at: Instant,
    acker: Acker,
}

async fn start() -> (Broker, mpsc::UnboundedReceiver<Seen>) {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", QueueSpec::default().ack_timeout(ACK_TIMEOUT))
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let seen = Seen {
                value: *d,
                redelivered: d.redelivered(),
                count: d.delivery_count(),
                at: Instant::now(),
                acker: d.acker(),
            };
            let tx = tx.clone();
            async move {
                tx.send(seen).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    (broker, rx)
}

#[actix::test]
async fn a_deferred_delivery_is_redelivered_after_the_ack_timeout_and_not_before() {
    tokio::time::pause();
    let (broker, mut rx) = start().await;
    broker.publish("t", "", 7_u32).await.unwrap();
    let first = rx.recv().await.unwrap();
    assert_eq!((first.value, first.redelivered, first.count), (7, false, 1));

    let early = tokio::time::timeout(ACK_TIMEOUT - Duration::from_millis(50), rx.recv()).await;
    assert!(early.is_err(), "redelivered before the ack timeout");

    let second = rx.recv().await.unwrap();
    assert_eq!((second.value, second.redelivered, second.count), (7, true, 2));
    let waited = second.at - first.at;
    assert!(waited >= ACK_TIMEOUT, "redelivered after {waited:?}");
    assert!(waited < ACK_TIMEOUT + Duration::from_secs(1), "redelivered only after {waited:?}");

    // The first delivery's tag is no longer unsettled; the redelivery's is.
    let tag = first.acker.tag();
    assert_eq!(first.acker.ack(false).await, Err(AckError::Refused(SettleError::UnknownTag(tag))));
    second.acker.ack(false).await.unwrap();
    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.redelivered, q.acked, q.in_flight, q.ready), (2, 1, 1, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_delivery_acked_in_time_is_not_redelivered() {
    tokio::time::pause();
    let (broker, mut rx) = start().await;
    broker.publish("t", "", 1_u32).await.unwrap();
    let first = rx.recv().await.unwrap();
    tokio::time::sleep(ACK_TIMEOUT - Duration::from_millis(100)).await;
    first.acker.ack(false).await.unwrap();
    let late = tokio::time::timeout(ACK_TIMEOUT * 4, rx.recv()).await;
    assert!(late.is_err(), "an acked delivery was redelivered");
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.delivered, q.redelivered, q.acked), (1, 0, 1), "{q:?}");
}
