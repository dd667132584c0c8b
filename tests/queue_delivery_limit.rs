//! The delivery limit (quorum queues' `delivery-limit`): a message nacked with requeue every time is
//! dead-lettered with reason `delivery_limit` once it has been delivered `delivery_limit` times.

mod common;
use common::wait_until;

use tokio::sync::mpsc;
use tubemail::{Broker, DeathReason, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};

const LIMIT: u32 = 3;

async fn start(spec: QueueSpec) -> (Broker, mpsc::UnboundedReceiver<u32>) {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec.delivery_limit(LIMIT))
        .queue("dlq", QueueSpec::default())
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(d.delivery_count()).unwrap();
                Outcome::Nack { requeue: true }
            }
        })
        .await
        .unwrap();
    (broker, rx)
}

#[actix::test]
async fn an_always_requeued_message_is_dead_lettered_after_the_delivery_limit() {
    tokio::time::pause();
    let (broker, mut counts) = start(QueueSpec::default().dead_letter("dlq")).await;
    let (tx, mut dead) = mpsc::unbounded_channel();
    broker
        .subscribe("dlq", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.deaths().to_vec())).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    broker.publish("t", "", 42_u32).await.unwrap();
    let (value, deaths) = dead.recv().await.unwrap();
    assert_eq!(value, 42);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    assert_eq!(&*deaths[0].queue, "q");
    assert_eq!(deaths[0].reason, DeathReason::DeliveryLimit);
    assert_eq!(deaths[0].count, 1);

    let mut seen = Vec::new();
    while let Ok(count) = counts.try_recv() {
        seen.push(count);
    }
    assert_eq!(seen, (1..=LIMIT).collect::<Vec<_>>(), "delivery counts before dead-lettering");
    let stats = wait_until(&broker, "the dead letter's ack", |s| s.queues["dlq"].acked == 1).await;
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.nacked, q.dead_lettered, q.ready, q.in_flight), (3, 3, 1, 0, 0), "{q:?}");
    assert_eq!(q.dropped.delivery_limit, 0);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn without_a_dead_letter_queue_it_is_counted_dropped_delivery_limit() {
    tokio::time::pause();
    let (broker, mut counts) = start(QueueSpec::default()).await;
    broker.publish("t", "", 42_u32).await.unwrap();
    let stats =
        wait_until(&broker, "the message to leave", |s| s.queues["q"].dropped.delivery_limit == 1).await;
    let mut seen = Vec::new();
    while let Ok(count) = counts.try_recv() {
        seen.push(count);
    }
    assert_eq!(seen, (1..=LIMIT).collect::<Vec<_>>());
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.dead_lettered, q.ready, q.in_flight), (3, 0, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}
