//! A new user's first hour (issue #10): the defaults keep the promise they name, a broker started in
//! the wrong place says what to do, and a payload of the wrong type is counted.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tubemail::{
    Broker, Confirm, Delivery, DeliveryMode, Outcome, Overflow, PayloadError, QueueSpec, StartError,
    SubscribeOptions, TopicKind, TopicSpec, Topology,
};

fn one_queue(spec: QueueSpec) -> Topology {
    Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout)).queue("q", spec).bind("t", "q", "")
}

/// 100,000 confirmed publishes into an at-least-once queue with default settings all arrive: a full
/// queue slows its publisher down instead of dropping (the default overflow is `block`).
#[actix::test]
async fn a_default_at_least_once_queue_loses_nothing_under_load() {
    const MESSAGES: u64 = 100_000;
    let broker = Broker::start(one_queue(QueueSpec::default())).unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    broker
        .subscribe_sync("q", move |_: Delivery<u64>| {
            count.fetch_add(1, Ordering::Relaxed);
            Outcome::Ack
        })
        .await
        .unwrap();
    let publisher = broker.publisher("t").unwrap();
    let publishing = std::thread::spawn(move || {
        futures::executor::block_on(async {
            for i in 0..MESSAGES {
                assert_eq!(publisher.publish("", i).await.unwrap(), Confirm::Routed { queues: 1 });
            }
        })
    });
    while !publishing.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publishing.join().unwrap();
    broker.idle().await;
    assert_eq!(handled.load(Ordering::Relaxed), MESSAGES);
    let q = &broker.stats().await.queues["q"];
    assert_eq!((q.acked, q.dropped.total()), (MESSAGES, 0), "{q:?}");
}

#[test]
fn a_dropping_policy_on_an_at_least_once_queue_is_warned_about() {
    let dropping = one_queue(QueueSpec::default().overflow(Overflow::DropHead));
    let warnings = dropping.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("queues.q") && warnings[0].contains("drop-head"), "{warnings:?}");
    assert!(one_queue(QueueSpec::default()).warnings().is_empty());
    let at_most_once = QueueSpec::default().overflow(Overflow::DropHead).delivery(DeliveryMode::AtMostOnce);
    assert!(one_queue(at_most_once).warnings().is_empty(), "at most once, dropping is the promise");
}

#[test]
fn starting_outside_an_actix_system_says_what_to_do() {
    let err = Broker::start(one_queue(QueueSpec::default())).unwrap_err();
    assert!(matches!(err, StartError::NoActixSystem), "{err:?}");
    assert!(err.to_string().contains("#[actix::main]"), "{err}");
}

#[actix::test]
async fn a_payload_of_the_wrong_type_is_counted_as_undecodable() {
    let broker = Broker::start(one_queue(QueueSpec::default())).unwrap();
    broker.subscribe("q", |_: Delivery<u64>| async { Outcome::Ack }).await.unwrap();
    broker.publish("t", "", "not a number".to_owned()).await.unwrap();
    broker.idle().await;
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.undecodable, q.dropped.rejected, q.acked), (1, 1, 0), "{q:?}");
}

/// Counted per topic too: a wrong type published to a topic bound to two queues counts twice
/// there (once per copy), and nothing on a topic whose payloads were right.
#[actix::test]
async fn a_payload_of_the_wrong_type_is_counted_per_topic_too() {
    let topology = Topology::new()
        .topic("orders", TopicSpec::new(TopicKind::Fanout))
        .topic("refunds", TopicSpec::new(TopicKind::Fanout))
        .queue("billing", QueueSpec::default())
        .queue("audit", QueueSpec::default())
        .bind("orders", "billing", "")
        .bind("orders", "audit", "")
        .bind("refunds", "billing", "");
    let broker = Broker::start(topology).unwrap();
    for queue in ["billing", "audit"] {
        broker.subscribe(queue, |_: Delivery<u64>| async { Outcome::Ack }).await.unwrap();
    }
    broker.publish("orders", "", "not a number".to_owned()).await.unwrap();
    broker.publish("refunds", "", 3_u64).await.unwrap();
    broker.idle().await;
    let stats = broker.stats().await;
    assert_eq!((stats.topics["orders"].undecodable, stats.topics["refunds"].undecodable), (2, 0));
    assert_eq!((stats.queues["billing"].undecodable, stats.queues["audit"].undecodable), (1, 1));
    assert_eq!(stats.queues["billing"].acked, 1, "{stats:?}");
}

/// The subscriber-side hook sees each mismatched payload with its message and the typed error, and a
/// panicking hook does not take the subscriber down.
#[actix::test]
async fn the_undecodable_hook_sees_each_payload_of_the_wrong_type() {
    let broker = Broker::start(one_queue(QueueSpec::default())).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let options = SubscribeOptions::default().on_undecodable(move |msg, error| {
        record.lock().unwrap().push((msg.key().to_owned(), error.clone()));
        panic!("a hook that panics");
    });
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let handler = move |_: Delivery<u64>| {
        count.fetch_add(1, Ordering::Relaxed);
        async { Outcome::Ack }
    };
    broker.subscribe_with("q", options, handler).await.unwrap();
    broker.publish("t", "first", "not a number".to_owned()).await.unwrap();
    broker.publish("t", "second", 7_u64).await.unwrap();
    broker.publish("t", "third", 1.5_f64).await.unwrap();
    broker.idle().await;
    let seen = seen.lock().unwrap().clone();
    let keys: Vec<&str> = seen.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["first", "third"]);
    assert!(matches!(seen[0].1, PayloadError::TypeMismatch { expected: "u64", .. }), "{:?}", seen[0].1);
    assert_eq!(handled.load(Ordering::Relaxed), 1, "the subscriber outlived its panicking hook");
    assert_eq!(broker.stats().await.queues["q"].undecodable, 2);
}

#[actix::test]
async fn starting_with_no_arbiters_is_refused() {
    let err = Broker::builder(one_queue(QueueSpec::default())).arbiters(0).start().unwrap_err();
    assert!(matches!(err, StartError::Arbiters(0)), "{err:?}");
}
