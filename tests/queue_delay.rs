//! Entries with a not-before time: delayed publishes (`publish_in`) and retries with a delay
//! (`Outcome::Retry`, `Acker::retry`), in memory and in a durable queue's journal across a restart.

mod common;
use common::{collect, wait_until};

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tubemail::{
    Broker, Confirm, DeathReason, Delivery, Outcome, Overflow, PublishError, QueueSpec, TopicKind, TopicSpec,
    Topology, DELAY_MAX,
};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

fn topology(spec: QueueSpec) -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec)
        .queue("dlq", QueueSpec::default())
        .bind("t", "q", "")
}

/// Subscribes a handler that hands over each delivery with the moment it ran, and acks it.
async fn timed(broker: &Broker, queue: &str) -> mpsc::UnboundedReceiver<(Instant, Delivery<u32>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe(queue, move |d: Delivery<u32>| {
            tx.send((Instant::now(), d)).unwrap();
            async { Outcome::Ack }
        })
        .await
        .unwrap();
    rx
}

#[actix::test]
async fn a_delayed_publish_is_scheduled_then_delivered_no_sooner_than_its_delay() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let published = Instant::now();
    let confirm = broker.publish_in("t", "", 7_u32, 10 * SECOND).await.unwrap();
    assert_eq!(confirm, Confirm::Routed { queues: 1 });
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.scheduled, q.ready), (1, 0), "{q:?}");
    assert!(q.conserved(), "{q:?}");
    let mut rx = timed(&broker, "q").await;
    let (at, d) = rx.recv().await.unwrap();
    assert_eq!(*d, 7);
    assert!(at - published >= 10 * SECOND, "delivered after {:?}", at - published);
    assert!(at - published < 11 * SECOND, "kept past its due time: {:?}", at - published);
    let stats = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
    assert_eq!(stats.queues["q"].scheduled, 0);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_zero_delay_is_a_plain_publish_and_a_delay_past_the_maximum_is_refused() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    broker.publish_in("t", "", 1_u32, Duration::ZERO).await.unwrap();
    assert_eq!(broker.stats().await.queues["q"].ready, 1);
    let too_long = DELAY_MAX + SECOND;
    match broker.publish_in("t", "", 2_u32, too_long).await {
        Err(PublishError::DelayTooLong { delay, max }) => assert_eq!((delay, max), (too_long, DELAY_MAX)),
        other => panic!("expected DelayTooLong, got {other:?}"),
    }
    let stats = broker.stats().await;
    assert_eq!((stats.queues["q"].enqueued, stats.topics["t"].published), (1, 1), "{stats:?}");
}

#[actix::test]
async fn due_messages_take_their_place_in_publish_order() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    broker.publish_in("t", "", 1_u32, 5 * SECOND).await.unwrap();
    broker.publish("t", "", 2_u32).await.unwrap();
    broker.publish_in("t", "", 3_u32, 2 * SECOND).await.unwrap();
    broker.publish("t", "", 4_u32).await.unwrap();
    tokio::time::sleep(6 * SECOND).await;
    let mut rx = collect::<u32>(&broker, "q").await;
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(*rx.recv().await.unwrap());
    }
    assert_eq!(order, [1, 2, 3, 4]);
}

#[actix::test]
async fn scheduled_messages_count_against_depth_max() {
    tokio::time::pause();
    let spec = QueueSpec::default().depth_max(2).overflow(Overflow::RejectPublish);
    let broker = Broker::start(topology(spec)).unwrap();
    broker.publish_in("t", "", 1_u32, HOUR).await.unwrap();
    broker.publish_in("t", "", 2_u32, HOUR).await.unwrap();
    let refused = broker.publish("t", "", 3_u32).await.unwrap();
    assert_eq!(refused, Confirm::Refused { accepted: 0, queues: vec!["q".to_owned()] });
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.scheduled, q.refused), (2, 1), "{q:?}");
}

#[actix::test]
async fn drop_head_drops_a_scheduled_message_when_nothing_is_ready() {
    tokio::time::pause();
    let spec = QueueSpec::default().depth_max(1).overflow(Overflow::DropHead).dead_letter("dlq");
    let broker = Broker::start(topology(spec)).unwrap();
    broker.publish_in("t", "", 1_u32, HOUR).await.unwrap();
    broker.publish_in("t", "", 2_u32, 2 * HOUR).await.unwrap();
    let mut dead = collect::<u32>(&broker, "dlq").await;
    let d = dead.recv().await.unwrap();
    assert_eq!((*d, d.deaths()[0].reason), (1, DeathReason::Maxlen), "the one due first goes");
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.scheduled, q.dead_lettered), (1, 1), "{q:?}");
}

#[actix::test]
async fn a_delayed_message_lives_its_ttl_from_its_due_time() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().message_ttl(SECOND))).unwrap();
    broker.publish_in("t", "", 9_u32, 10 * SECOND).await.unwrap();
    tokio::time::sleep(10 * SECOND + SECOND / 2).await;
    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(*rx.recv().await.unwrap(), 9, "expired before its due time plus its ttl");
    let q = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await.queues["q"].clone();
    assert_eq!(q.dropped.expired, 0);
}

#[actix::test]
async fn a_handler_that_retries_gets_the_message_again_after_the_delay_with_its_count_raised() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            tx.send((Instant::now(), d.delivery_count(), d.redelivered())).unwrap();
            let first = d.delivery_count() == 1;
            async move {
                match first {
                    true => Outcome::Retry { after: 30 * SECOND },
                    false => Outcome::Ack,
                }
            }
        })
        .await
        .unwrap();
    broker.publish("t", "", 1_u32).await.unwrap();
    let (first, count, redelivered) = rx.recv().await.unwrap();
    assert_eq!((count, redelivered), (1, false));
    let q = wait_until(&broker, "the retry", |s| s.queues["q"].scheduled == 1).await.queues["q"].clone();
    assert_eq!((q.nacked, q.in_flight, q.ready), (1, 0, 0), "{q:?}");
    let (second, count, redelivered) = rx.recv().await.unwrap();
    assert_eq!((count, redelivered), (2, true));
    assert!(second - first >= 30 * SECOND, "retried after {:?}", second - first);
    let stats = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
    assert_eq!(stats.queues["q"].redelivered, 1);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn retries_past_the_delivery_limit_are_dead_lettered() {
    tokio::time::pause();
    let spec = QueueSpec::default().delivery_limit(3).dead_letter("dlq");
    let broker = Broker::start(topology(spec)).unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let seen = handled.clone();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            seen.lock().unwrap().push((Instant::now(), d.delivery_count()));
            async { Outcome::Retry { after: SECOND } }
        })
        .await
        .unwrap();
    let mut dead = collect::<u32>(&broker, "dlq").await;
    broker.publish("t", "", 5_u32).await.unwrap();
    let d = dead.recv().await.unwrap();
    assert_eq!((*d, d.deaths()[0].reason), (5, DeathReason::DeliveryLimit));
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(handled.windows(2).all(|w| w[1].0 - w[0].0 >= SECOND), "{handled:?}");
}

#[actix::test]
async fn a_deferred_delivery_is_retried_through_its_acker() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            tx.send((Instant::now(), d.delivery_count())).unwrap();
            let acker = d.acker();
            let first = d.delivery_count() == 1;
            async move {
                match first {
                    true => acker.retry(5 * SECOND).await.unwrap(),
                    false => acker.ack(false).await.unwrap(),
                }
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    broker.publish("t", "", 1_u32).await.unwrap();
    let (first, _) = rx.recv().await.unwrap();
    let (second, count) = rx.recv().await.unwrap();
    assert_eq!(count, 2);
    assert!(second - first >= 5 * SECOND, "retried after {:?}", second - first);
    let stats = wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn idle_waits_for_scheduled_messages_that_a_subscriber_will_take() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let mut rx = collect::<u32>(&broker, "q").await;
    broker.publish_in("t", "", 3_u32, HOUR).await.unwrap();
    let started = Instant::now();
    broker.idle().await;
    assert!(Instant::now() - started >= HOUR, "idle with a message still scheduled");
    assert_eq!(*rx.recv().await.unwrap(), 3);
}

#[actix::test]
async fn shutdown_does_not_wait_for_scheduled_messages_and_reports_them() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let _rx = collect::<u32>(&broker, "q").await;
    broker.publish_in("t", "", 1_u32, HOUR).await.unwrap();
    let started = Instant::now();
    let report = broker.shutdown(10 * SECOND).await;
    assert!(Instant::now() - started < 10 * SECOND, "shutdown waited for a message due in an hour");
    assert!(report.drained, "{report:?}");
    let q = &report.stats.queues["q"];
    assert_eq!((q.scheduled, q.delivered), (1, 0), "{q:?}");
    assert!(report.stats.conserved(), "{report:?}");
}

#[actix::test]
async fn deleting_a_queue_counts_its_scheduled_messages_as_deleted() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    broker.publish_in("t", "", 1_u32, HOUR).await.unwrap();
    broker.publish("t", "", 2_u32).await.unwrap();
    broker.delete_queue("q").await.unwrap();
    let stats = broker.stats().await;
    let q = &stats.deleted_queues[0].stats;
    assert_eq!((q.dropped.deleted, q.scheduled, q.ready), (2, 0, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

/// One life of a process: an actix system of its own, under tokio's paused clock.
fn life<Fut: Future>(f: impl FnOnce() -> Fut) -> Fut::Output {
    actix::System::new().block_on(async move {
        tokio::time::pause();
        f().await
    })
}

fn durable(dir: &std::path::Path) -> Topology {
    topology(QueueSpec::default().durable(true)).data_dir(dir)
}

#[test]
fn a_durable_queue_keeps_a_delayed_publish_waiting_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    life(|| async {
        let broker = Broker::start(durable(dir.path())).unwrap();
        broker.publish_in("t", "", 4_u32, HOUR).await.unwrap();
        let report = broker.shutdown(SECOND).await;
        assert_eq!(report.stats.queues["q"].scheduled, 1);
    });
    life(|| async {
        let broker = Broker::start(durable(dir.path())).unwrap();
        let q = broker.stats().await.queues["q"].clone();
        assert_eq!((q.scheduled, q.ready, q.recovered), (1, 0, 1), "{q:?}");
        let started = Instant::now();
        let mut rx = timed(&broker, "q").await;
        let (at, d) = rx.recv().await.unwrap();
        assert_eq!(*d, 4);
        // The wall clock moved on a little between the two lives; the paused clock did not.
        assert!(at - started >= HOUR - 5 * SECOND, "delivered {:?} after the restart", at - started);
        wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;
        broker.shutdown(SECOND).await;
    });
}

#[test]
fn a_durable_queue_keeps_a_retry_waiting_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    life(|| async {
        let (broker, streams) = tubemail_log::sim::simulated(|| Broker::start(durable(dir.path())));
        let broker = broker.unwrap();
        broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Retry { after: HOUR } }).await.unwrap();
        broker.publish("t", "", 8_u32).await.unwrap();
        wait_until(&broker, "the retry", |s| s.queues["q"].scheduled == 1).await;
        // A kill -9: what was written stays, nothing more is synced or closed.
        for s in &streams {
            s.abandon();
        }
    });
    life(|| async {
        let broker = Broker::start(durable(dir.path())).unwrap();
        let q = broker.stats().await.queues["q"].clone();
        assert_eq!((q.scheduled, q.ready), (1, 0), "{q:?}");
        let started = Instant::now();
        let mut rx = timed(&broker, "q").await;
        let (at, d) = rx.recv().await.unwrap();
        assert_eq!((*d, d.delivery_count(), d.redelivered()), (8, 2, true));
        assert!(at - started >= HOUR - 5 * SECOND, "retried {:?} after the restart", at - started);
        broker.shutdown(SECOND).await;
    });
}
