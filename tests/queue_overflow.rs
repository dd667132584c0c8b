//! Every overflow policy of a full queue: drop-head, reject-publish, reject-publish-dlx and block.

mod common;
use common::collect;

use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    Broker, Confirm, DeathReason, Delivery, Outcome, Overflow, QueueSpec, TopicKind, TopicSpec, Topology,
    TryPublishError,
};

async fn recv_values(rx: &mut mpsc::UnboundedReceiver<Delivery<u32>>, n: usize) -> Vec<u32> {
    let mut values = Vec::new();
    for _ in 0..n {
        values.push(**rx.recv().await.as_ref().unwrap());
    }
    values
}

fn one_queue(spec: QueueSpec) -> Topology {
    Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout)).queue("q", spec).bind("t", "q", "")
}

#[actix::test]
async fn drop_head_drops_the_oldest_and_counts_it_as_overflow() {
    let broker =
        Broker::start(one_queue(QueueSpec::default().depth_max(3).overflow(Overflow::DropHead))).unwrap();
    for i in 0..5_u32 {
        assert_eq!(broker.publish("t", "", i).await.unwrap(), Confirm::Routed { queues: 1 });
    }
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.enqueued, q.ready, q.dropped.overflow, q.dead_lettered), (5, 3, 2, 0), "{q:?}");
    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(recv_values(&mut rx, 3).await, [2, 3, 4]);
    let report = broker.shutdown(Duration::from_secs(1)).await;
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn drop_head_dead_letters_the_oldest_with_reason_maxlen() {
    let topology =
        one_queue(QueueSpec::default().depth_max(2).overflow(Overflow::DropHead).dead_letter("dlq"))
            .queue("dlq", QueueSpec::default());
    let broker = Broker::start(topology).unwrap();
    for i in 0..4_u32 {
        assert_eq!(broker.publish("t", "", i).await.unwrap(), Confirm::Routed { queues: 1 });
    }
    let mut dead = collect::<u32>(&broker, "dlq").await;
    for expected in [0, 1] {
        let d = dead.recv().await.unwrap();
        assert_eq!(*d, expected);
        assert_eq!(d.deaths().len(), 1);
        assert_eq!(&*d.deaths()[0].queue, "q");
        assert_eq!(d.deaths()[0].reason, DeathReason::Maxlen);
        assert_eq!(d.deaths()[0].count, 1);
    }
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.ready, q.dead_lettered, q.dropped.overflow), (2, 2, 0), "{q:?}");
    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(recv_values(&mut rx, 2).await, [2, 3]);
    let report = broker.shutdown(Duration::from_secs(1)).await;
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn reject_publish_refuses_naming_the_queue_while_other_queues_keep_it() {
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("full", QueueSpec::default().depth_max(2).overflow(Overflow::RejectPublish))
        .queue("roomy", QueueSpec::default())
        .bind("t", "full", "")
        .bind("t", "roomy", "");
    let broker = Broker::start(topology).unwrap();
    for i in 0..2_u32 {
        assert_eq!(broker.publish("t", "", i).await.unwrap(), Confirm::Routed { queues: 2 });
    }
    let confirm = broker.publish("t", "", 2_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Refused { accepted: 1, queues: vec!["full".to_owned()] });

    let stats = broker.stats().await;
    let (full, roomy) = (&stats.queues["full"], &stats.queues["roomy"]);
    assert_eq!((full.enqueued, full.ready, full.refused), (2, 2, 1), "{full:?}");
    assert_eq!((roomy.enqueued, roomy.ready, roomy.refused), (3, 3, 0), "{roomy:?}");
    assert_eq!(stats.topics["t"].refused, 1);
    assert!(stats.conserved(), "{stats:?}");

    // The refused message is not in `full`; the kept one is in `roomy`.
    let mut rx = collect::<u32>(&broker, "full").await;
    assert_eq!(recv_values(&mut rx, 2).await, [0, 1]);
    let mut rx = collect::<u32>(&broker, "roomy").await;
    assert_eq!(recv_values(&mut rx, 3).await, [0, 1, 2]);
}

#[actix::test]
async fn reject_publish_dlx_refuses_and_dead_letters_with_reason_maxlen() {
    let topology =
        one_queue(QueueSpec::default().depth_max(1).overflow(Overflow::RejectPublishDlx).dead_letter("dlq"))
            .queue("dlq", QueueSpec::default());
    let broker = Broker::start(topology).unwrap();
    assert_eq!(broker.publish("t", "", 0_u32).await.unwrap(), Confirm::Routed { queues: 1 });
    let confirm = broker.publish("t", "", 1_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Refused { accepted: 0, queues: vec!["q".to_owned()] });

    let mut dead = collect::<u32>(&broker, "dlq").await;
    let d = dead.recv().await.unwrap();
    assert_eq!(*d, 1);
    assert_eq!(d.deaths().len(), 1);
    assert_eq!(&*d.deaths()[0].queue, "q");
    assert_eq!(d.deaths()[0].reason, DeathReason::Maxlen);

    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.enqueued, q.ready, q.refused, q.refused_dead_lettered), (1, 1, 1, 1), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn block_makes_publish_wait_until_a_subscriber_makes_room() {
    tokio::time::pause();
    let broker =
        Broker::start(one_queue(QueueSpec::default().depth_max(2).overflow(Overflow::Block))).unwrap();
    for i in 0..2_u32 {
        assert_eq!(broker.publish("t", "", i).await.unwrap(), Confirm::Routed { queues: 1 });
    }
    let publisher = broker.clone();
    let blocked = actix::spawn(async move { publisher.publish("t", "", 2_u32).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!blocked.is_finished(), "publish to a full block queue returned without room");
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.enqueued, q.ready), (2, 2), "{q:?}");

    let mut rx = collect::<u32>(&broker, "q").await;
    assert_eq!(recv_values(&mut rx, 3).await, [0, 1, 2]);
    assert_eq!(blocked.await.unwrap(), Ok(Confirm::Routed { queues: 1 }));
    let report = broker.shutdown(Duration::from_secs(1)).await;
    let q = &report.stats.queues["q"];
    assert_eq!((q.enqueued, q.acked, q.refused), (3, 3, 0), "{q:?}");
    assert!(report.stats.conserved(), "{:?}", report.stats);
}

#[actix::test]
async fn try_publish_to_a_full_block_queue_hands_the_value_back() {
    let broker =
        Broker::start(one_queue(QueueSpec::default().depth_max(1).overflow(Overflow::Block))).unwrap();
    assert_eq!(broker.try_publish("t", "", "first".to_owned()).unwrap(), Confirm::Routed { queues: 1 });
    let err = broker.try_publish("t", "", "second".to_owned()).unwrap_err();
    assert!(matches!(err, TryPublishError::Full(_)), "{err:?}");
    assert_eq!(err.into_inner(), Some("second".to_owned()));
    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.enqueued, q.ready), (1, 1), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn reject_publish_counts_dead_letters_toward_depth_max() {
    tokio::time::pause();
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Direct))
        .queue("src", QueueSpec::default().dead_letter("full"))
        .queue("full", QueueSpec::default().depth_max(2).overflow(Overflow::RejectPublish))
        .bind("t", "src", "src")
        .bind("t", "full", "full");
    let broker = Broker::start(topology).unwrap();
    broker.subscribe("src", |_: Delivery<u32>| async { Outcome::Reject }).await.unwrap();
    for i in 0..2_u32 {
        broker.publish("t", "src", i).await.unwrap();
    }
    for _ in 0..100 {
        if broker.stats().await.queues["full"].ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Two dead letters fill `full` to its depth_max: a publish must now be refused.
    let confirm = broker.publish("t", "full", 2_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Refused { accepted: 0, queues: vec!["full".to_owned()] });
    let q = broker.stats().await.queues["full"].clone();
    assert!(q.ready <= 2, "a reject-publish queue of depth_max 2 holds {} ready: {q:?}", q.ready);
}

#[actix::test]
async fn reject_publish_dlx_into_a_deleted_dead_letter_queue_keeps_the_queue_running() {
    tokio::time::pause();
    let spec = QueueSpec::default().depth_max(1).overflow(Overflow::RejectPublishDlx).dead_letter("dlq");
    let broker = Broker::start(one_queue(spec).queue("dlq", QueueSpec::default())).unwrap();
    broker.delete_queue("dlq").await.unwrap();
    assert_eq!(broker.publish("t", "", 0_u32).await.unwrap(), Confirm::Routed { queues: 1 });
    let confirm = broker.publish("t", "", 1_u32).await.unwrap();
    assert_eq!(confirm, Confirm::Refused { accepted: 0, queues: vec!["q".to_owned()] });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = broker.stats().await;
    let q = stats.queues.get("q").expect("the queue actor is still running");
    assert_eq!((q.enqueued, q.ready, q.refused), (1, 1, 1), "{q:?}");
    assert!(q.conserved(), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}
