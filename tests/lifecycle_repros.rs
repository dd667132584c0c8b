//! The promises hold while the topology changes, at unsubscribe and at shutdown: each test is one of
//! the defects reproduced in issue #9, and failed before its fix.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    BindError, Broker, Confirm, DeclareError, DeleteError, Delivery, DeliveryMode, Outcome, Overflow,
    QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology,
};

fn fanout(queues: &[(&str, QueueSpec)]) -> Broker {
    let mut topology = Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout));
    for (name, spec) in queues {
        topology = topology.queue(*name, spec.clone()).bind("t", *name, "");
    }
    Broker::start(topology).unwrap()
}

/// Starts `work` on a plain thread now (as a user's publisher threads are); the future awaits it
/// without blocking the actix system the broker runs on.
fn on_thread<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> impl std::future::Future<Output = R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    async move { rx.await.expect("the thread finished") }
}

/// #9.1: a confirmed publish never vanishes when it races `delete_queue`: publisher threads against
/// a task deleting, re-declaring and re-binding the queue.
#[actix::test]
async fn a_publish_racing_delete_queue_is_counted_where_it_went() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    let routed = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..3 {
        let (broker, routed) = (broker.clone(), routed.clone());
        threads.push(on_thread(move || {
            for i in 0..3_000_u32 {
                let confirm = futures::executor::block_on(broker.publish("t", "", i)).unwrap();
                if let Confirm::Routed { queues } = confirm {
                    assert!(queues > 0, "a publish confirmed as routed to no queue");
                    routed.fetch_add(u64::from(queues), Ordering::Relaxed);
                }
            }
        }));
    }
    let churn = async {
        for _ in 0..200 {
            broker.delete_queue("q").await.unwrap();
            broker.declare_queue("q", QueueSpec::default()).unwrap();
            broker.bind("t", "q", "").await.unwrap();
            tokio::task::yield_now().await;
        }
    };
    let (_, _) = tokio::join!(futures::future::join_all(threads), churn);
    broker.idle().await;
    let stats = broker.stats().await;
    let enqueued: u64 = stats.all_queues().map(|q| q.enqueued).sum();
    assert_eq!(enqueued, routed.load(Ordering::Relaxed), "confirmed copies and enqueued copies differ");
    assert_eq!(stats.topics["t"].routed, enqueued);
    assert!(stats.conserved(), "{stats:?}");
}

/// #9.2: concurrent declarations of distinct queues never share a queue.
#[actix::test]
async fn concurrent_declarations_never_alias_queues() {
    let broker = Broker::start(Topology::new().topic("t", TopicSpec::new(TopicKind::Direct))).unwrap();
    let declare = |side: u32| {
        let broker = broker.clone();
        on_thread(move || {
            for i in 0..300 {
                broker.declare_queue(&format!("q-{side}-{i}"), QueueSpec::default()).unwrap();
            }
        })
    };
    tokio::join!(declare(0), declare(1));
    for side in 0..2 {
        for i in 0..300 {
            let name = format!("q-{side}-{i}");
            broker.bind("t", &name, &name).await.unwrap();
            assert_eq!(broker.publish("t", &name, i).await.unwrap(), Confirm::Routed { queues: 1 });
        }
    }
    let stats = broker.stats().await;
    assert_eq!(stats.queues.len(), 600);
    for (name, q) in &stats.queues {
        assert_eq!(q.enqueued, 1, "{name} received {} messages", q.enqueued);
    }
}

/// #9.3: a publish whose every target was deleted as it was routed is unroutable: it goes to the
/// alternate queue, and is counted.
#[actix::test]
async fn a_publish_to_a_just_deleted_queue_goes_to_the_alternate_and_is_counted() {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout).alternate("unrouted"))
        .queue("q", QueueSpec::default())
        .queue("unrouted", QueueSpec::default())
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    broker.publish("t", "", 1_u32).await.unwrap(); // caches the route to q
    broker.delete_queue("q").await.unwrap();
    // The topic drops q's binding a moment later; the cached route still names q.
    let confirm = broker.publish("t", "", 2_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Unroutable { alternate: Some("unrouted".into()) });
    broker.idle().await;
    let stats = broker.stats().await;
    assert_eq!(stats.queues["unrouted"].enqueued, 1);
    assert_eq!(stats.topics["t"].unroutable, 1);
    assert!(stats.conserved(), "{stats:?}");
}

/// #9.4: shutdown releases publishers waiting for room in a full `block` queue; the copies they had
/// placed elsewhere are counted.
#[actix::test]
async fn shutdown_releases_blocked_publishers_and_counts_their_copies() {
    let block = QueueSpec::default().overflow(Overflow::Block).depth_max(1);
    let broker = fanout(&[("open", QueueSpec::default()), ("full", block)]);
    broker.publish("t", "", 1_u32).await.unwrap();
    let waiting = {
        let broker = broker.clone();
        on_thread(move || futures::executor::block_on(broker.publish("t", "", 2_u32)))
    };
    common::wait_until(&broker, "the second publish to wait", |s| s.queues["open"].enqueued == 2).await;
    let report = broker.shutdown(Duration::from_millis(50)).await;
    let confirm =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the publisher was released");
    assert_eq!(confirm.unwrap(), Confirm::Routed { queues: 1 }, "only the open queue took it");
    let stats = broker.stats().await;
    assert_eq!(stats, report.stats);
    assert_eq!(stats.topics["t"].routed, 3);
    assert!(stats.conserved(), "{stats:?}");
}

/// #9.5: statistics identify a queue incarnation, not a name.
#[actix::test]
async fn a_redeclared_queue_has_counters_of_its_own() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    broker.publish("t", "", 1_u32).await.unwrap();
    broker.delete_queue("q").await.unwrap();
    broker.declare_queue("q", QueueSpec::default()).unwrap();
    broker.idle().await;
    let stats = broker.stats().await;
    assert_eq!(stats.queues["q"].enqueued, 0, "the new incarnation took nothing");
    assert_eq!(stats.deleted_queues.len(), 1);
    assert_eq!(stats.deleted_queues[0].stats.enqueued, 1);
    assert_eq!(stats.deleted_queues[0].stats.dropped.deleted, 1);
    assert!(stats.conserved(), "{stats:?}");
}

/// #9.6: dead letters a queue made before its deletion arrive in the dead-letter queue.
#[actix::test]
async fn dead_letters_made_before_a_delete_are_delivered() {
    let small = QueueSpec::default().depth_max(1).overflow(Overflow::DropHead).dead_letter("dead");
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", small)
        .queue("dead", QueueSpec::default())
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    for i in 0..5_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    broker.delete_queue("q").await.unwrap();
    broker.idle().await;
    let stats = broker.stats().await;
    assert_eq!(stats.queues["dead"].ready, 4, "{stats:?}");
    assert_eq!(stats.deleted_queues[0].stats.dead_lettered, 4);
    assert!(stats.conserved(), "{stats:?}");
}

/// #9.7: `unsubscribe` returns after the subscriber stopped: no handler runs after it, and what it
/// counts lost (at most once) or requeues (at least once) is exactly what no handler ran for.
#[actix::test]
async fn unsubscribe_returns_after_the_subscriber_stopped() {
    for mode in [DeliveryMode::AtMostOnce, DeliveryMode::AtLeastOnce] {
        let broker = fanout(&[("q", QueueSpec::default().delivery(mode))]);
        let handled = Arc::new(AtomicU64::new(0));
        let count = handled.clone();
        let options = SubscribeOptions::default().prefetch(10);
        let sub = broker
            .subscribe_with("q", options, move |_: Delivery<u32>| {
                let count = count.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    count.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                }
            })
            .await
            .unwrap();
        for i in 0..10_u32 {
            broker.publish("t", "", i).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let report = sub.unsubscribe(Duration::from_millis(1)).await;
        let at_return = handled.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(handled.load(Ordering::SeqCst), at_return, "{mode:?}: a handler ran after unsubscribe");
        // The handler running at the timeout was interrupted: it never finished.
        assert_eq!((report.stopped, report.interrupted), (false, 1), "{mode:?}: {report:?}");
        let q = broker.stats().await.queues["q"].clone();
        match mode {
            DeliveryMode::AtMostOnce => {
                assert_eq!(at_return + report.lost, 10, "{mode:?}: {report:?}");
                assert_eq!(q.dropped.lost_at_most_once, report.lost);
                assert_eq!(q.acked, at_return);
            }
            DeliveryMode::AtLeastOnce => {
                assert_eq!(at_return + report.requeued, 10, "{mode:?}: {report:?}");
                assert_eq!((q.acked, q.ready), (at_return, report.requeued), "{q:?}");
            }
        }
        assert!(broker.stats().await.conserved());
    }
}

/// Given the time, unsubscribe lets the handlers finish what the subscriber was handed.
#[actix::test]
async fn unsubscribe_with_time_enough_drains_the_subscriber() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let sub = broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(10), move |_: Delivery<u32>| {
            let count = count.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                count.fetch_add(1, Ordering::SeqCst);
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    for i in 0..10_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    let report = sub.unsubscribe(Duration::from_secs(5)).await;
    assert!(report.drained && report.stopped, "{report:?}");
    assert_eq!((report.requeued, report.interrupted), (0, 0), "{report:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 10);
}

/// #9.9: `shutdown` and `unsubscribe` work from a plain thread, off any async runtime.
#[actix::test]
async fn shutdown_and_unsubscribe_work_off_a_runtime() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    let sub = broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Ack }).await.unwrap();
    let b = broker.clone();
    let (report, shut) = on_thread(move || {
        let report = futures::executor::block_on(sub.unsubscribe(Duration::from_millis(100)));
        let shut = futures::executor::block_on(b.shutdown(Duration::from_millis(100)));
        (report, shut)
    })
    .await;
    assert!(report.drained && report.stopped, "{report:?}");
    assert!(shut.shut_down && shut.drained, "{shut:?}");
}

/// After shutdown every method answers `Closed`, and a second shutdown says it was already done.
#[actix::test]
async fn after_shutdown_every_method_answers_closed() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    let first = broker.shutdown(Duration::from_millis(10)).await;
    assert!(first.shut_down);
    assert_eq!(broker.declare_queue("p", QueueSpec::default()), Err(DeclareError::Closed));
    assert_eq!(broker.bind("t", "q", "").await, Err(BindError::Closed));
    assert_eq!(broker.unbind("t", "q", "").await, Err(BindError::Closed));
    assert_eq!(broker.delete_queue("q").await, Err(DeleteError::Closed));
    let second = broker.shutdown(Duration::from_millis(10)).await;
    assert!(!second.shut_down, "a second shutdown reported shutting down: {second:?}");
    assert_eq!(second.stats, first.stats);
    broker.idle().await; // resolves at once
}

#[actix::test]
async fn idle_waits_for_the_handlers() {
    let broker = fanout(&[("q", QueueSpec::default())]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(*d).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    for i in 0..20_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    broker.idle().await;
    let mut seen = 0;
    while rx.try_recv().is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 20, "idle resolved before every handler ran");
    assert_eq!(broker.stats().await.queues["q"].acked, 20);
}
