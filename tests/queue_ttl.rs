//! Message TTL: messages older than the queue's `message_ttl` are never delivered; they are counted as
//! `dropped.expired`, or dead-lettered with reason `expired`.

mod common;
use common::{collect, wait_until};

use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{Acker, Broker, DeathReason, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};

const TTL: Duration = Duration::from_secs(1);

fn topology(spec: QueueSpec) -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec)
        .queue("dlq", QueueSpec::default())
        .bind("t", "q", "")
}

#[actix::test]
async fn messages_older_than_the_ttl_are_never_delivered_and_counted_expired() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(TTL))).unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    tokio::time::sleep(TTL * 2).await;
    broker.publish("t", "", 3_u32).await.unwrap();
    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(*rx.recv().await.unwrap(), 3);
    let stats = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
    tokio::time::sleep(TTL).await;
    assert!(rx.try_recv().is_err(), "an expired message was delivered");
    let q = &stats.queues["q"];
    assert_eq!((q.enqueued, q.delivered, q.dropped.expired, q.dead_lettered), (4, 1, 3, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn messages_younger_than_the_ttl_are_delivered() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(TTL))).unwrap();
    broker.publish("t", "", 7_u32).await.unwrap();
    tokio::time::sleep(TTL - Duration::from_millis(10)).await;
    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(*rx.recv().await.unwrap(), 7);
    let stats = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
    assert_eq!(stats.queues["q"].dropped.expired, 0);
}

#[actix::test]
async fn expired_messages_are_removed_without_a_consumer() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(TTL))).unwrap();
    broker.publish("t", "", 1_u32).await.unwrap();
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(broker.stats().await.queues["q"].ready, 1, "expired before its ttl");
    tokio::time::sleep(TTL).await;
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.ready, q.dropped.expired), (0, 1), "{q:?}");
}

#[actix::test]
async fn expired_messages_are_dead_lettered_with_reason_expired() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(TTL).dead_letter("dlq"))).unwrap();
    for i in 0..2_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    tokio::time::sleep(TTL * 2).await;
    let mut q_rx = collect::<u32>(&broker, "q").await;
    let mut dead = collect::<u32>(&broker, "dlq").await;
    for expected in [0, 1] {
        let d = dead.recv().await.unwrap();
        assert_eq!(*d, expected);
        assert_eq!(d.deaths().len(), 1);
        assert_eq!(&*d.deaths()[0].queue, "q");
        assert_eq!(d.deaths()[0].reason, DeathReason::Expired);
    }
    let stats = wait_until(&broker, "the dead letters' acks", |s| s.queues["dlq"].acked == 2).await;
    assert!(q_rx.try_recv().is_err(), "an expired message was delivered");
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.dead_lettered, q.dropped.expired), (0, 2, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_requeued_message_keeps_its_original_expiry() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(TTL))).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Acker)>();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.acker())).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    broker.publish("t", "", 5_u32).await.unwrap();
    let (value, acker) = rx.recv().await.unwrap();
    assert_eq!(value, 5);
    // In flight past its expiry, then requeued: it must expire instead of being redelivered.
    tokio::time::sleep(TTL * 2).await;
    acker.nack(false, true).await.unwrap();
    let stats = wait_until(&broker, "the expiry", |s| s.queues["q"].dropped.expired == 1).await;
    tokio::time::sleep(TTL).await;
    assert!(rx.try_recv().is_err(), "an expired message was redelivered");
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.ready, q.in_flight), (1, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}
