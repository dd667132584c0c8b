//! Shutdown: stop accepting publishes, wait up to the timeout for handlers in progress, then requeue
//! what is unacked (at-least-once) or count it lost (at-most-once).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tubemail::{
    Broker, Delivery, DeliveryMode, Outcome, PublishError, QueueSpec, SubscribeError, SubscribeOptions,
    TopicKind, TopicSpec, Topology, TryPublishError,
};

fn broker(spec: QueueSpec) -> Broker {
    let topology =
        Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout)).queue("q", spec).bind("t", "q", "");
    Broker::start(topology).unwrap()
}

/// Subscribes a handler that reports each delivery, then takes `work` before acking.
async fn slow_subscriber(broker: &Broker, prefetch: u32, work: Duration) -> mpsc::UnboundedReceiver<u32> {
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(prefetch), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                tokio::time::sleep(work).await;
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    rx
}

#[actix::test]
async fn shutdown_waits_for_a_handler_in_progress_within_the_timeout() {
    tokio::time::pause();
    let broker = broker(QueueSpec::default());
    let mut rx = slow_subscriber(&broker, 64, Duration::from_secs(2)).await;
    broker.publish("t", "", 1_u32).await.unwrap();
    assert_eq!(rx.recv().await, Some(1));
    let started = Instant::now();
    let report = broker.shutdown(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "shutdown did not wait for the handler: {took:?}");
    assert!(took < Duration::from_secs(10), "shutdown waited for the timeout: {took:?}");
    assert!(report.drained);
    assert_eq!((report.requeued, report.lost), (0, 0));
    let q = &report.stats.queues["q"];
    assert_eq!((q.acked, q.ready, q.in_flight), (1, 0, 0), "{q:?}");
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn shutdown_requeues_unacked_deliveries_at_least_once() {
    tokio::time::pause();
    let broker = broker(QueueSpec::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    for i in 0..3_u32 {
        assert_eq!(rx.recv().await, Some(i));
    }
    let started = Instant::now();
    let report = broker.shutdown(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "shutdown gave up before its timeout: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!report.drained);
    assert_eq!((report.requeued, report.lost), (3, 0));
    let q = &report.stats.queues["q"];
    assert_eq!((q.ready, q.in_flight, q.acked, q.consumers), (3, 0, 0, 0), "{q:?}");
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn shutdown_returns_at_the_timeout_while_a_handler_still_runs() {
    tokio::time::pause();
    let broker = broker(QueueSpec::default());
    let mut rx = slow_subscriber(&broker, 64, Duration::from_secs(3600)).await;
    broker.publish("t", "", 1_u32).await.unwrap();
    assert_eq!(rx.recv().await, Some(1));
    let started = Instant::now();
    let report = broker.shutdown(Duration::from_secs(1)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown with a 1 s timeout took {took:?}");
    assert!(!report.drained);
    assert_eq!(report.requeued, 1);
    assert_eq!(report.stats.queues["q"].ready, 1);
}

#[actix::test]
async fn shutdown_counts_unsettled_at_most_once_deliveries_lost() {
    tokio::time::pause();
    let broker = broker(QueueSpec::default().delivery(DeliveryMode::AtMostOnce));
    let mut rx = slow_subscriber(&broker, 2, Duration::from_secs(3600)).await;
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    assert_eq!(rx.recv().await, Some(0));
    let report = broker.shutdown(Duration::from_secs(1)).await;
    assert!(!report.drained);
    // Two were handed out (the prefetch): one in the handler, one in the subscriber's mailbox.
    assert_eq!((report.requeued, report.lost), (0, 2));
    let q = &report.stats.queues["q"];
    assert_eq!((q.dropped.lost_at_most_once, q.ready, q.in_flight), (2, 1, 0), "{q:?}");
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn publish_and_subscribe_after_shutdown_are_refused_as_closed() {
    let broker = broker(QueueSpec::default());
    broker.shutdown(Duration::from_secs(1)).await;
    assert_eq!(broker.publish("t", "", 1_u32).await, Err(PublishError::Closed));
    assert_eq!(broker.publish_bytes("t", "", vec![1_u8]).await, Err(PublishError::Closed));
    assert!(matches!(
        broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Ack }).await,
        Err(SubscribeError::Closed)
    ));
    let stats = broker.stats().await;
    assert_eq!(stats.topics["t"].published, 0);
    assert_eq!(stats.queues["q"].enqueued, 0);
}

#[actix::test]
async fn try_publish_after_shutdown_hands_the_value_back_as_closed() {
    let broker = broker(QueueSpec::default());
    broker.shutdown(Duration::from_secs(1)).await;
    let err = broker.try_publish("t", "", "kept".to_owned()).unwrap_err();
    assert!(matches!(err, TryPublishError::Closed(_)), "{err:?}");
    assert_eq!(err.into_inner(), Some("kept".to_owned()));
}
