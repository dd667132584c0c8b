//! Routing through the broker, by RabbitMQ's rules: words, `*` and `#`, one copy per queue, the four
//! topic kinds, unroutable messages, key limits, and binding changes at run time.

use std::collections::BTreeMap;

use tubemail::routing::RoutingError;
use tubemail::{
    BindError, Broker, Confirm, Delivery, Outcome, PublishError, QueueSpec, Stats, TopicKind, TopicSpec,
    Topology, TryPublishError,
};

/// A broker with one topic `t` of `kind` and one queue per binding, named by its index (`q0`, `q1`...).
fn broker_with(kind: TopicKind, patterns: &[&str]) -> Broker {
    let mut topology = Topology::new().topic("t", TopicSpec::new(kind));
    for (i, pattern) in patterns.iter().enumerate() {
        topology = topology.queue(format!("q{i}"), QueueSpec::default()).bind("t", format!("q{i}"), *pattern);
    }
    Broker::start(topology).unwrap()
}

fn ready(stats: &Stats, queue: &str) -> u64 {
    stats.queues[queue].ready
}

/// Publishes `key` and returns the confirm and which queues' ready counts grew.
async fn route(broker: &Broker, key: &str) -> (Confirm, Vec<String>) {
    let before = broker.stats().await;
    let confirm = broker.publish("t", key, key.to_owned()).await.unwrap();
    let after = broker.stats().await;
    let reached =
        after.queues.keys().filter(|q| ready(&after, q) > ready(&before, q)).cloned().collect::<Vec<_>>();
    (confirm, reached)
}

fn names(queues: &[&str]) -> Vec<String> {
    queues.iter().map(|q| q.to_string()).collect()
}

#[actix::test]
async fn empty_key_matches_hash_hash_hash_and_empty_but_not_star_or_hash_star_hash() {
    let broker = broker_with(TopicKind::Topic, &["#", "#.#", "", "*", "#.*.#"]);
    let (confirm, reached) = route(&broker, "").await;
    assert_eq!(confirm, Confirm::Routed { queues: 3 });
    assert_eq!(reached, names(&["q0", "q1", "q2"]));
}

#[actix::test]
async fn hash_matches_zero_words() {
    let broker = broker_with(TopicKind::Topic, &["a.#", "#.a", "#.a.#", "a.*"]);
    let (confirm, reached) = route(&broker, "a").await;
    assert_eq!(confirm, Confirm::Routed { queues: 3 });
    assert_eq!(reached, names(&["q0", "q1", "q2"]));
}

#[actix::test]
async fn a_hash_b_matches_zero_one_and_several_middle_words_but_not_a_trailing_word() {
    let broker = broker_with(TopicKind::Topic, &["a.#.b"]);
    for key in ["a.b", "a..b", "a.x.b", "a.x.y.b"] {
        let (confirm, reached) = route(&broker, key).await;
        assert_eq!(confirm, Confirm::Routed { queues: 1 }, "{key:?}");
        assert_eq!(reached, names(&["q0"]), "{key:?}");
    }
    for key in ["a.b.c", "b.a.b", "a", "b"] {
        let (confirm, reached) = route(&broker, key).await;
        assert_eq!(confirm, Confirm::Unroutable { alternate: None }, "{key:?}");
        assert!(reached.is_empty(), "{key:?}");
    }
}

#[actix::test]
async fn empty_segments_are_words() {
    let broker = broker_with(TopicKind::Topic, &["a.*.b", "a.b", "*.*", "*"]);
    // `a..b` is three words: a, "", b.
    assert_eq!(route(&broker, "a..b").await.1, names(&["q0"]));
    // `a.` and `.` are two words each; `oneword` is one.
    assert_eq!(route(&broker, "a.").await.1, names(&["q2"]));
    assert_eq!(route(&broker, ".").await.1, names(&["q2"]));
    assert_eq!(route(&broker, "oneword").await.1, names(&["q3"]));
}

#[actix::test]
async fn a_queue_gets_one_copy_when_several_of_its_bindings_match() {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Topic))
        .queue("q", QueueSpec::default())
        .queue("other", QueueSpec::default())
        .bind("t", "q", "orders.#")
        .bind("t", "q", "*.eu.*")
        .bind("t", "q", "orders.eu.paid")
        .bind("t", "q", "#")
        .bind("t", "other", "#.paid");
    let broker = Broker::start(topology).unwrap();
    let confirm = broker.publish("t", "orders.eu.paid", 1_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Routed { queues: 2 });
    let stats = broker.stats().await;
    assert_eq!(stats.queues["q"].enqueued, 1);
    assert_eq!(stats.queues["other"].enqueued, 1);
    assert_eq!(stats.topics["t"].routed, 2);
}

#[actix::test]
async fn direct_routing_is_exact_equality() {
    let broker = broker_with(TopicKind::Direct, &["a.b", "a.*", "#", ""]);
    assert_eq!(route(&broker, "a.b").await, (Confirm::Routed { queues: 1 }, names(&["q0"])));
    // Wildcards are ordinary characters to a direct topic.
    assert_eq!(route(&broker, "a.*").await, (Confirm::Routed { queues: 1 }, names(&["q1"])));
    assert_eq!(route(&broker, "a.x").await.0, Confirm::Unroutable { alternate: None });
    assert_eq!(route(&broker, "a.b.c").await.0, Confirm::Unroutable { alternate: None });
    assert_eq!(route(&broker, "").await, (Confirm::Routed { queues: 1 }, names(&["q3"])));
}

#[actix::test]
async fn fanout_ignores_the_key() {
    let broker = broker_with(TopicKind::Fanout, &["x", "y", ""]);
    for key in ["zzz", "", "x", "a.b.c"] {
        let (confirm, reached) = route(&broker, key).await;
        assert_eq!(confirm, Confirm::Routed { queues: 3 }, "{key:?}");
        assert_eq!(reached, names(&["q0", "q1", "q2"]), "{key:?}");
    }
}

#[actix::test]
async fn hash_routing_sends_each_key_to_one_queue_and_always_the_same_one() {
    let queues = ["q0", "q1", "q2", "q3"];
    let mut topology = Topology::new().topic("t", TopicSpec::new(TopicKind::Hash));
    for q in queues {
        topology = topology.queue(q, QueueSpec::default()).bind("t", q, "");
    }
    let broker = Broker::start(topology).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    for q in queues {
        let tx = tx.clone();
        broker
            .subscribe(q, move |d: Delivery<u32>| {
                let seen = (q.to_owned(), d.key().to_owned());
                let tx = tx.clone();
                async move {
                    tx.send(seen).unwrap();
                    Outcome::Ack
                }
            })
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..40).map(|i| format!("customer-{i}")).collect();
    for round in 0..5_u32 {
        for key in &keys {
            assert_eq!(broker.publish("t", key, round).await.unwrap(), Confirm::Routed { queues: 1 });
        }
    }
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..keys.len() * 5 {
        let (queue, key) = rx.recv().await.unwrap();
        let first = owner.entry(key.clone()).or_insert_with(|| queue.clone());
        assert_eq!(*first, queue, "key {key:?} reached two queues");
    }
    assert_eq!(owner.len(), keys.len());
    let used: std::collections::BTreeSet<&String> = owner.values().collect();
    assert!(used.len() > 1, "40 keys all hashed to one of four queues: {owner:?}");
}

#[actix::test]
async fn hash_routing_shares_keys_by_weight() {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Hash))
        .queue("light", QueueSpec::default())
        .queue("heavy", QueueSpec::default())
        .bind_weighted("t", "light", "", 1)
        .bind_weighted("t", "heavy", "", 3);
    let broker = Broker::start(topology).unwrap();
    let total = 2000_u64;
    for i in 0..total {
        assert_eq!(broker.publish("t", &format!("key-{i}"), i).await.unwrap(), Confirm::Routed { queues: 1 });
    }
    let stats = broker.stats().await;
    let (light, heavy) = (stats.queues["light"].enqueued, stats.queues["heavy"].enqueued);
    assert_eq!(light + heavy, total);
    // Expected 1500 of 2000 (weight 3 of 4); the hash is fixed, so allow a wide but telling margin.
    assert!((1350..=1650).contains(&heavy), "heavy got {heavy} of {total}, light {light}");
}

#[actix::test]
async fn unroutable_goes_to_the_alternate_queue() {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Topic).alternate("alt"))
        .queue("q", QueueSpec::default())
        .queue("alt", QueueSpec::default())
        .bind("t", "q", "orders.#");
    let broker = Broker::start(topology).unwrap();
    let confirm = broker.publish("t", "invoices.1", 1_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Unroutable { alternate: Some("alt".to_owned()) });
    assert_eq!(broker.publish("t", "orders.1", 2_u32).await.unwrap(), Confirm::Routed { queues: 1 });
    let stats = broker.stats().await;
    assert_eq!(stats.queues["alt"].ready, 1);
    assert_eq!(stats.queues["q"].ready, 1);
    let t = &stats.topics["t"];
    assert_eq!((t.published, t.unroutable, t.alternate, t.dropped_unroutable), (2, 1, 1, 0), "{t:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn unroutable_without_an_alternate_is_counted_as_dropped() {
    let broker = broker_with(TopicKind::Topic, &["orders.#"]);
    let confirm = broker.publish("t", "invoices.1", 1_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Unroutable { alternate: None });
    let stats = broker.stats().await;
    let t = &stats.topics["t"];
    assert_eq!((t.published, t.routed, t.unroutable, t.dropped_unroutable), (1, 0, 1, 1), "{t:?}");
    assert_eq!(stats.queues["q0"].enqueued, 0);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_key_over_255_bytes_is_refused() {
    let broker = broker_with(TopicKind::Fanout, &[""]);
    let longest = "k".repeat(255);
    assert_eq!(broker.publish("t", &longest, 1_u32).await.unwrap(), Confirm::Routed { queues: 1 });
    let too_long = "k".repeat(256);
    assert_eq!(
        broker.publish("t", &too_long, 2_u32).await,
        Err(PublishError::Key(RoutingError::KeyTooLong { len: 256 }))
    );
    assert!(matches!(
        broker.try_publish("t", &too_long, 3_u32),
        Err(TryPublishError::Invalid(PublishError::Key(RoutingError::KeyTooLong { len: 256 })))
    ));
    let stats = broker.stats().await;
    assert_eq!(stats.topics["t"].published, 1);
    assert_eq!(stats.queues["q0"].enqueued, 1);
}

#[actix::test]
async fn bind_and_unbind_at_run_time_take_effect() {
    let topology =
        Topology::new().topic("t", TopicSpec::new(TopicKind::Topic)).queue("q", QueueSpec::default());
    let broker = Broker::start(topology).unwrap();
    assert_eq!(broker.publish("t", "a.b", 1_u32).await.unwrap(), Confirm::Unroutable { alternate: None });

    assert_eq!(broker.bind("t", "q", "a.*").await, Ok(true));
    assert_eq!(broker.bind("t", "q", "a.*").await, Ok(false), "binding twice is idempotent");
    assert_eq!(broker.publish("t", "a.b", 2_u32).await.unwrap(), Confirm::Routed { queues: 1 });
    assert_eq!(broker.stats().await.topics["t"].bindings, 1);

    assert_eq!(broker.unbind("t", "q", "a.*").await, Ok(true));
    assert_eq!(broker.unbind("t", "q", "a.*").await, Ok(false));
    assert_eq!(broker.publish("t", "a.b", 3_u32).await.unwrap(), Confirm::Unroutable { alternate: None });

    let stats = broker.stats().await;
    assert_eq!(stats.queues["q"].enqueued, 1);
    assert_eq!(stats.topics["t"].bindings, 0);
}

#[actix::test]
async fn binding_to_an_unknown_queue_or_topic_fails() {
    let topology =
        Topology::new().topic("t", TopicSpec::new(TopicKind::Topic)).queue("q", QueueSpec::default());
    let broker = Broker::start(topology).unwrap();
    assert_eq!(broker.bind("t", "nope", "a").await, Err(BindError::UnknownQueue("nope".to_owned())));
    assert_eq!(broker.bind("nope", "q", "a").await, Err(BindError::UnknownTopic("nope".to_owned())));
    assert_eq!(broker.unbind("t", "nope", "a").await, Err(BindError::UnknownQueue("nope".to_owned())));
    assert_eq!(broker.unbind("nope", "q", "a").await, Err(BindError::UnknownTopic("nope".to_owned())));
    assert!(matches!(
        broker.bind("t", "q", "a.pa*d").await,
        Err(BindError::Routing(RoutingError::InvalidPattern { .. }))
    ));
    assert!(matches!(
        broker.bind("t", "q", &"a".repeat(256)).await,
        Err(BindError::Routing(RoutingError::PatternTooLong { len: 256 }))
    ));
    assert_eq!(broker.stats().await.topics["t"].bindings, 0);
}

/// Publishers cache routes with the target queues' handles: deleting a queue and declaring one of the
/// same name must reroute the next publish of the same key to the new queue, on every topic kind.
#[actix::test]
async fn a_cached_route_follows_a_queue_deleted_and_declared_again() {
    for kind in [TopicKind::Topic, TopicKind::Direct, TopicKind::Fanout] {
        let broker = broker_with(kind, &["a.b"]);
        assert_eq!(broker.publish("t", "a.b", 1_u32).await.unwrap(), Confirm::Routed { queues: 1 });
        broker.delete_queue("q0").await.unwrap();
        // Routed to no queue, or unroutable once the topic has dropped the deleted queue's bindings.
        let confirm = broker.publish("t", "a.b", 2_u32).await.unwrap();
        assert!(
            matches!(confirm, Confirm::Routed { queues: 0 } | Confirm::Unroutable { alternate: None }),
            "{kind:?}: the deleted queue takes nothing: {confirm:?}"
        );
        broker.declare_queue("q0", QueueSpec::default()).unwrap();
        broker.bind("t", "q0", "a.b").await.unwrap();
        assert_eq!(broker.publish("t", "a.b", 3_u32).await.unwrap(), Confirm::Routed { queues: 1 });
        let stats = broker.stats().await;
        assert_eq!(stats.queues["q0"].enqueued, 1, "{kind:?}: the new queue has the third message");
    }
}
