//! Bridges forward a queue of one broker to a topic of another at least once: the source acks a
//! message only after the destination confirmed it.

use std::time::Duration;

use tubemail::{Broker, Delivery, Outcome, SubscribeOptions, Topology};

fn broker(toml: &str) -> Broker {
    Broker::start(Topology::from_toml_str(toml).unwrap()).unwrap()
}

const SOURCE: &str = r##"
    [topics.events]
    [queues.outbox]
    delivery = "at-least-once"
    delivery_limit = 1000
    [[bindings]]
    topic = "events"
    queue = "outbox"
    key = "#"
"##;

#[actix::test]
async fn a_refused_forward_stays_at_the_source_until_the_destination_has_room() {
    let here = broker(SOURCE);
    let there = broker(
        r##"
        [topics.orders]
        [queues.billing]
        delivery = "at-least-once"
        depth_max = 1
        overflow = "reject-publish"
        [[bindings]]
        topic = "orders"
        queue = "billing"
        key = "#"
        "##,
    );
    let bridge = SubscribeOptions::default().prefetch(1);
    here.forward("outbox", &there, "orders", bridge).await.unwrap();
    for i in 0..3_u64 {
        here.publish("events", &format!("orders.{i}"), i).await.unwrap();
    }
    // The destination holds one; the others go back and forth, never acked at the source.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let source = here.stats().await.queues["outbox"].clone();
    assert_eq!(source.acked, 1, "only the forward that was confirmed is acked: {source:?}");
    assert!(source.nacked >= 1, "refused forwards went back to the source: {source:?}");
    assert_eq!(source.ready + source.in_flight, 2, "{source:?}");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    there
        .subscribe_sync("billing", move |d: Delivery<u64>| {
            tx.send((d.key().to_owned(), *d)).unwrap();
            Outcome::Ack
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
    }
    got.sort();
    let want: Vec<(String, u64)> = (0..3).map(|i| (format!("orders.{i}"), i)).collect();
    assert_eq!(got, want, "every message arrived once there was room, with its key");
    here.idle().await;
    let source = here.stats().await.queues["outbox"].clone();
    assert_eq!((source.acked, source.ready, source.in_flight), (3, 0, 0), "{source:?}");
}

/// A local queue forwarded to RabbitMQ, and a RabbitMQ queue consumed into a local topic: the round
/// trip a module takes when it moves out of the process.
#[cfg(feature = "rabbitmq")]
#[actix::test]
async fn a_message_makes_the_round_trip_through_rabbitmq() {
    let addr = "127.0.0.1:5672".parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "RabbitMQ is not running on {addr}: start it (this test runs against it in CI)"
    );
    let p = format!("tmc_bridge_{}", std::process::id());
    let remote_topology = Topology::from_toml_str(&format!(
        r##"
        [topics.{p}_orders]
        [queues.{p}_billing]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_orders"
        queue = "{p}_billing"
        key = "orders.#"
        "##
    ))
    .unwrap();
    let rabbit = Broker::builder(remote_topology)
        .rabbitmq("amqp://guest:guest@127.0.0.1:5672/%2f")
        .connect()
        .await
        .unwrap();
    let here = broker(SOURCE);
    let back = broker(
        r##"
        [topics.returns]
        [queues.ledger]
        [[bindings]]
        topic = "returns"
        queue = "ledger"
        key = "#"
        "##,
    );
    here.forward("outbox", &rabbit, &format!("{p}_orders"), SubscribeOptions::default()).await.unwrap();
    rabbit.forward(&format!("{p}_billing"), &back, "returns", SubscribeOptions::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    back.subscribe_sync("ledger", move |d: Delivery<String>| {
        tx.send((d.key().to_owned(), d.value().clone())).unwrap();
        Outcome::Ack
    })
    .await
    .unwrap();
    here.publish("events", "orders.9.paid", "order 9 paid".to_string()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, ("orders.9.paid".to_owned(), "order 9 paid".to_owned()));
    rabbit.delete_queue(&format!("{p}_billing")).await.unwrap();
    rabbit.shutdown(Duration::from_secs(1)).await;
}
