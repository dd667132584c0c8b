//! Conservation: after a mixed workload (acks, nacks, rejects, panics, overflow, refusals, TTL, dead
//! letters, unroutable messages), every message is accounted for, in every queue and overall.

use std::time::Duration;

use tubemail::{
    Broker, Delivery, DeliveryMode, Outcome, Overflow, QueueSpec, Stats, SubscribeOptions, TopicKind,
    TopicSpec, Topology,
};

const TTL: Duration = Duration::from_secs(1);

fn topology() -> Topology {
    Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
        .topic("misc", TopicSpec::new(TopicKind::Direct))
        .queue(
            "work",
            QueueSpec::default()
                .depth_max(20)
                .overflow(tubemail::Overflow::DropHead)
                .dead_letter("dead")
                .delivery_limit(3),
        )
        .queue(
            "bounded",
            QueueSpec::default().depth_max(5).overflow(Overflow::RejectPublishDlx).dead_letter("dead"),
        )
        .queue("strict", QueueSpec::default().depth_max(5).overflow(Overflow::RejectPublish))
        .queue("lossy", QueueSpec::default().delivery(DeliveryMode::AtMostOnce))
        .queue("overflow", QueueSpec::default().depth_max(5).overflow(Overflow::DropHead))
        .queue("ttl", QueueSpec::default().message_ttl(TTL).dead_letter("dead"))
        .queue("ttl-drop", QueueSpec::default().message_ttl(TTL))
        .queue("dead", QueueSpec::default())
        .queue("unrouted", QueueSpec::default())
        .queue("known", QueueSpec::default())
        .bind("events", "work", "job.*")
        .bind("events", "bounded", "job.*")
        .bind("events", "strict", "job.*")
        .bind("events", "lossy", "*.*")
        .bind("events", "overflow", "*.*")
        .bind("events", "ttl", "job.#")
        .bind("events", "ttl-drop", "job.#")
        .bind("misc", "known", "known")
}

fn event_key(i: u32) -> String {
    match i % 9 {
        8 => "zzz".to_owned(),
        7 => format!("other.{i}"),
        _ => format!("job.{i}"),
    }
}

async fn subscribe_all(broker: &Broker) {
    broker
        .subscribe("work", |d: Delivery<u32>| async move {
            match *d % 10 {
                0 => Outcome::Nack { requeue: true },
                1 => Outcome::Reject,
                2 => Outcome::Nack { requeue: false },
                3 if d.delivery_count() == 1 => panic!("work handler fails on {}", *d),
                4 if !d.redelivered() => Outcome::Nack { requeue: true },
                _ => Outcome::Ack,
            }
        })
        .await
        .unwrap();
    // Prefetch 1: a panic loses only the delivery in hand, so the other outcomes all happen too.
    broker
        .subscribe_with("lossy", SubscribeOptions::default().prefetch(1), |d: Delivery<u32>| async move {
            if (*d).is_multiple_of(7) {
                panic!("lossy handler fails on {}", *d);
            }
            if (*d).is_multiple_of(5) {
                Outcome::Reject
            } else {
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    broker.subscribe("dead", |_: Delivery<u32>| async { Outcome::Ack }).await.unwrap();
}

fn quiet(s: &Stats) -> bool {
    let empty = |q: &str| s.queues[q].ready == 0 && s.queues[q].in_flight == 0;
    ["work", "lossy", "dead", "ttl", "ttl-drop"].into_iter().all(empty)
}

#[actix::test]
async fn a_mixed_workload_conserves_every_message() {
    tokio::time::pause();
    let broker = Broker::start(topology()).unwrap();
    for i in 0..60_u32 {
        broker.publish("events", &event_key(i), i).await.unwrap();
    }
    for i in 0..10_u32 {
        let key = if i % 2 == 0 { "known" } else { "unknown" };
        broker.publish("misc", key, i).await.unwrap();
    }
    subscribe_all(&broker).await;
    for i in 60..90_u32 {
        broker.publish("events", &event_key(i), i).await.unwrap();
    }
    tokio::time::sleep(TTL * 3).await;
    let mut stats = broker.stats().await;
    for _ in 0..10_000 {
        if quiet(&stats) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        stats = broker.stats().await;
    }
    assert!(quiet(&stats), "the workload did not settle: {stats:?}");

    for (name, q) in &stats.queues {
        assert!(q.conserved(), "queue {name} does not conserve: {q:?}");
    }
    assert!(stats.conserved(), "{stats:?}");

    // The workload exercised every way out of a queue.
    let q = |name: &str| &stats.queues[name];
    assert!(q("work").acked > 0 && q("work").dead_lettered > 0 && q("work").restarts > 0, "{:?}", q("work"));
    assert!(q("work").redelivered > 0 && q("work").dropped.overflow == 0, "{:?}", q("work"));
    assert!(q("bounded").refused > 0 && q("bounded").refused_dead_lettered > 0, "{:?}", q("bounded"));
    assert!(q("strict").refused > 0 && q("strict").ready == 5, "{:?}", q("strict"));
    let lossy = &q("lossy").dropped;
    assert!(q("lossy").acked > 0 && lossy.rejected > 0 && lossy.lost_at_most_once > 0, "{:?}", q("lossy"));
    assert!(q("overflow").dropped.overflow > 0 && q("overflow").ready == 5, "{:?}", q("overflow"));
    assert!(q("ttl").dead_lettered > 0 && q("ttl-drop").dropped.expired > 0, "{stats:?}");
    assert!(q("dead").acked > 0 && q("unrouted").ready > 0, "{stats:?}");
    assert!(stats.topics["events"].alternate > 0, "{:?}", stats.topics["events"]);
    assert!(stats.topics["misc"].dropped_unroutable > 0, "{:?}", stats.topics["misc"]);

    let report = broker.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained);
    for (name, q) in &report.stats.queues {
        assert!(q.conserved(), "queue {name} does not conserve after shutdown: {q:?}");
    }
    assert!(report.stats.conserved(), "{:?}", report.stats);
}
