//! Nack and reject: a requeued message returns ahead of younger ones, marked redelivered; without
//! requeue it is dead-lettered as `rejected`. Manual acks: `multiple` settles every earlier deferred
//! tag, and settling a settled tag is an error.

mod common;
use common::wait_until;

use tokio::sync::mpsc;
use tubemail::queue::SettleError;
use tubemail::{
    AckError, Acker, Broker, DeathReason, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind,
    TopicSpec, Topology,
};

fn topology(spec: QueueSpec) -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec)
        .queue("dlq", QueueSpec::default())
        .bind("t", "q", "")
}

/// Subscribes a handler that defers every delivery and hands out its value and acker.
async fn deferring(broker: &Broker, prefetch: u32) -> mpsc::UnboundedReceiver<(u32, Acker)> {
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(prefetch), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.acker())).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    rx
}

#[actix::test]
async fn a_nacked_message_comes_back_ahead_of_younger_ones_marked_redelivered() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(1), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.redelivered(), d.delivery_count())).unwrap();
                if *d == 0 && !d.redelivered() {
                    Outcome::Nack { requeue: true }
                } else {
                    Outcome::Ack
                }
            }
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(rx.recv().await.unwrap());
    }
    assert_eq!(seen, [(0, false, 1), (0, true, 2), (1, false, 1), (2, false, 1)]);
    let stats = wait_until(&broker, "the acks", |s| s.queues["q"].acked == 3).await;
    let q = &stats.queues["q"];
    assert_eq!((q.delivered, q.redelivered, q.nacked, q.ready, q.in_flight), (4, 1, 1, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn nack_without_requeue_and_reject_dead_letter_with_reason_rejected() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().dead_letter("dlq"))).unwrap();
    broker
        .subscribe("q", |d: Delivery<u32>| async move {
            match *d {
                0 => Outcome::Nack { requeue: false },
                1 => Outcome::Reject,
                _ => Outcome::Ack,
            }
        })
        .await
        .unwrap();
    let (tx, mut dead) = mpsc::unbounded_channel();
    broker
        .subscribe("dlq", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.deaths().to_vec(), d.redelivered())).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    for expected in [0, 1] {
        let (value, deaths, redelivered) = dead.recv().await.unwrap();
        assert_eq!(value, expected);
        assert!(!redelivered, "a dead letter is a first delivery in its new queue");
        assert_eq!(deaths.len(), 1, "{deaths:?}");
        assert_eq!(&*deaths[0].queue, "q");
        assert_eq!(deaths[0].reason, DeathReason::Rejected);
        assert_eq!(deaths[0].count, 1);
    }
    let stats =
        wait_until(&broker, "the acks", |s| s.queues["dlq"].acked == 2 && s.queues["q"].acked == 1).await;
    let q = &stats.queues["q"];
    assert_eq!((q.nacked, q.dead_lettered, q.dropped.rejected, q.delivered), (2, 2, 0, 3), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn reject_without_a_dead_letter_queue_is_counted_dropped_rejected() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Reject }).await.unwrap();
    broker.publish("t", "", 1_u32).await.unwrap();
    let stats = wait_until(&broker, "the reject", |s| s.queues["q"].nacked == 1).await;
    let q = &stats.queues["q"];
    assert_eq!((q.dropped.rejected, q.dead_lettered, q.ready, q.in_flight), (1, 0, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn ack_multiple_settles_every_earlier_deferred_tag() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let mut rx = deferring(&broker, 10).await;
    for i in 0..4_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let mut ackers = Vec::new();
    for i in 0..4_u32 {
        let (value, acker) = rx.recv().await.unwrap();
        assert_eq!(value, i);
        ackers.push(acker);
    }
    assert_eq!(broker.stats().await.queues["q"].in_flight, 4);
    ackers[2].ack(true).await.unwrap();
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.acked, q.in_flight), (3, 1), "ack(multiple) of the third tag: {q:?}");
    for acker in &ackers[..3] {
        assert_eq!(acker.ack(false).await, Err(AckError::Refused(SettleError::UnknownTag(acker.tag()))));
    }
    ackers[3].ack(false).await.unwrap();
    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.acked, q.in_flight, q.ready), (4, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn acking_an_already_acked_tag_is_refused() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let mut rx = deferring(&broker, 10).await;
    broker.publish("t", "", 1_u32).await.unwrap();
    let (_, acker) = rx.recv().await.unwrap();
    assert_eq!(acker.ack(false).await, Ok(()));
    let tag = acker.tag().0;
    assert_eq!(
        acker.ack(false).await,
        Err(AckError::Refused(SettleError::UnknownTag(tubemail::ids::DeliveryTag(tag))))
    );
    assert_eq!(
        acker.ack(true).await,
        Err(AckError::Refused(SettleError::UnknownTag(tubemail::ids::DeliveryTag(tag))))
    );
    assert_eq!(
        acker.nack(false, true).await,
        Err(AckError::Refused(SettleError::UnknownTag(tubemail::ids::DeliveryTag(tag))))
    );
    let stats = broker.stats().await;
    assert_eq!(stats.queues["q"].acked, 1);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn manual_nack_with_requeue_redelivers_at_the_original_position() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let mut rx = deferring(&broker, 2).await;
    let (first, first_acker) = rx.recv().await.unwrap();
    let (second, second_acker) = rx.recv().await.unwrap();
    assert_eq!((first, second), (0, 1));
    // Message 2 is ready behind them; nacking 0 puts it back ahead of 2.
    first_acker.nack(false, true).await.unwrap();
    let (again, again_acker) = rx.recv().await.unwrap();
    assert_eq!(again, 0, "the requeued message did not come back ahead of the younger one");
    second_acker.ack(false).await.unwrap();
    again_acker.ack(false).await.unwrap();
    let (last, last_acker) = rx.recv().await.unwrap();
    assert_eq!(last, 2);
    last_acker.ack(false).await.unwrap();
    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.acked, q.redelivered, q.in_flight, q.ready), (3, 1, 0, 0), "{q:?}");
}
