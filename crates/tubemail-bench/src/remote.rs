//! The fan-out shape on a remote broker (`tubemail bench fanout --on URL`), twice in one run: through
//! tubemail's `Broker` API on the remote backend, and through the backend's own client crate driven
//! directly, on the same exchange and queues, so that what tubemail's layer costs is one ratio.
//!
//! Both sides do the same work: the same headers or properties (content type, message id, which
//! JetStream deduplicates by), every publish confirmed, at most [`CONFIRM_WINDOW`] unconfirmed at
//! once (tubemail: that many `publish` futures in flight; the client: a window of confirms); one
//! consumer per queue with the queue's default prefetch ([`PREFETCH_DEFAULT`]); at-least-once acks
//! each delivery on its own (tubemail's handlers settle one delivery each), at-most-once consumes
//! with auto-ack. The queues are the ones tubemail declares from the shape's topology (quorum queues
//! for at-least-once, classic for at-most-once, see `docs/BACKENDS.md`), declared once, used by both
//! sides in turn ([`REMOTE_ROUNDS`] rounds, interleaved, medians reported), and deleted at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tubemail::topology::{DeliveryMode, PREFETCH_DEFAULT};
use tubemail::{Broker, Bytes, Delivery, Outcome, Topology};

use crate::peers::{
    err, per_queue_expected, run_id, stamped, timed_out, PeerError, PeerResult, Run, Tally, CONFIRM_WINDOW,
    RUN_TIMEOUT,
};
use crate::{FANOUT_BINDINGS, FANOUT_KEYS};

/// The shape's topology under a per-run prefix, on `mode` queues.
fn topology(prefix: &str, mode: DeliveryMode) -> Topology {
    let mut toml = format!("[topics.{prefix}_fanout]\nkind = \"topic\"\n");
    for (queue, pattern) in FANOUT_BINDINGS {
        toml += &format!(
            "[queues.{prefix}_{queue}]\ndelivery = \"{mode}\"\n[[bindings]]\ntopic = \"{prefix}_fanout\"\n\
             queue = \"{prefix}_{queue}\"\nkey = \"{pattern}\"\n"
        );
    }
    Topology::from_toml_str(&toml).expect("the fan-out shape's topology is valid")
}

/// Rounds of each side in one run, interleaved (tubemail first, then the client first, ...): the
/// median of each side is reported, so that neither gains from going first or second.
pub const REMOTE_ROUNDS: usize = 7;

/// Runs the shape through tubemail on `url` and through the backend's client directly,
/// [`REMOTE_ROUNDS`] times each, interleaved; returns the medians `[tubemail, direct]` by rate.
///
/// # Errors
/// [`PeerError`] when the broker is unreachable or a run fails or times out.
pub fn fanout_remote(
    url: &str,
    messages: u64,
    payload: usize,
    mode: DeliveryMode,
) -> Result<[PeerResult; 2], PeerError> {
    let system = "tubemail-remote";
    let prefix = format!("tubemail_bench_{}", run_id().replace('-', "_"));
    let topology = topology(&prefix, mode);
    let url = url.to_owned();
    let runner = std::thread::Builder::new().name("tubemail-bench-remote".into());
    let thread = runner.spawn(move || {
        actix::System::new().block_on(async move {
            let broker = Broker::builder(topology.clone()).remote(&url).connect().await;
            let broker = broker.map_err(|e| PeerError::Failed { system, reason: e.to_string() })?;
            let mode_name: &'static str =
                if mode == DeliveryMode::AtLeastOnce { "at-least-once" } else { "at-most-once" };
            let nats = broker.endpoint().is_some_and(|e| e.backend() == "nats");
            let (through_name, direct_name) = if nats {
                ("tubemail-nats", "jetstream-direct")
            } else {
                ("tubemail-rabbitmq", "rabbitmq-direct")
            };
            let (mut throughs, mut directs) = (Vec::new(), Vec::new());
            let mut failure = None;
            for round in 0..REMOTE_ROUNDS * 2 {
                let tubemail_turn = (round % 2 == 0) == (round / 2 % 2 == 0);
                let run = if tubemail_turn {
                    let run = through_tubemail(&broker, &prefix, messages, payload);
                    match tokio::time::timeout(RUN_TIMEOUT, run).await {
                        Ok(run) => run.map(|r| r.into_result(through_name, mode_name, messages)),
                        Err(_) => Err(timed_out(through_name)),
                    }
                } else {
                    let run = async {
                        match nats {
                            true => direct_jetstream(&url, &prefix, messages, payload).await,
                            false => direct_rabbitmq(&url, &prefix, messages, payload, mode).await,
                        }
                    };
                    match tokio::time::timeout(RUN_TIMEOUT, run).await {
                        Ok(run) => run
                            .map(|r| r.into_result(direct_name, mode_name, messages))
                            .map_err(|reason| PeerError::Failed { system: direct_name, reason }),
                        Err(_) => Err(timed_out(direct_name)),
                    }
                };
                match run {
                    Ok(r) if tubemail_turn => throughs.push(r),
                    Ok(r) => directs.push(r),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            for queue in topology.queues.keys() {
                let _ = broker.delete_queue(queue).await;
            }
            broker.shutdown(Duration::from_secs(2)).await;
            if let Some(e) = failure {
                return Err(e);
            }
            Ok([median(throughs), median(directs)])
        })
    });
    let thread = thread.map_err(|e| PeerError::Failed { system, reason: format!("thread: {e}") })?;
    thread.join().map_err(|_| PeerError::Failed { system, reason: "the run panicked".to_owned() })?
}

/// The run with the median rate.
fn median(mut runs: Vec<PeerResult>) -> PeerResult {
    runs.sort_by(|a, b| a.deliveries_per_sec().total_cmp(&b.deliveries_per_sec()));
    runs.swap_remove(runs.len() / 2)
}

async fn through_tubemail(
    broker: &Broker,
    prefix: &str,
    messages: u64,
    payload: usize,
) -> Result<Run, PeerError> {
    let system = "tubemail-rabbitmq";
    let failed = |e: &dyn std::fmt::Display| PeerError::Failed { system, reason: e.to_string() };
    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut tallies, mut subscriptions) = (Vec::new(), Vec::new());
    for ((queue, _), want) in FANOUT_BINDINGS.iter().zip(wants) {
        let tally = Arc::new(Mutex::new(Tally::new(payload)));
        let (seen, done) = (Arc::clone(&tally), done_tx.clone());
        let count = AtomicU64::new(0);
        let subscription = broker
            .subscribe_sync(&format!("{prefix}_{queue}"), move |d: Delivery<Bytes>| {
                seen.lock().expect("not poisoned").handled(base, d.value());
                if count.fetch_add(1, Ordering::Relaxed) + 1 == want {
                    let _ = done.send(());
                }
                Outcome::Ack
            })
            .await
            .map_err(|e| failed(&e))?;
        subscriptions.push(subscription);
        if want == 0 {
            let _ = done_tx.send(());
        }
        tallies.push(tally);
    }
    let topic = format!("{prefix}_fanout");
    let start = Instant::now();
    let publishes = stream::iter(0..messages).map(|i| {
        let body = stamped(base, payload);
        let key = FANOUT_KEYS[(i % 8) as usize];
        broker.publish_bytes(&topic, key, body)
    });
    let mut confirmed = 0_u64;
    let mut confirms = publishes.buffer_unordered(CONFIRM_WINDOW);
    while let Some(confirm) = confirms.next().await {
        confirm.map_err(|e| failed(&e))?;
        confirmed += 1;
    }
    for _ in 0..FANOUT_BINDINGS.len() {
        done_rx.recv().await;
    }
    // The direct client's run comes next, on the same queues: these consumers leave first.
    for subscription in subscriptions {
        subscription.unsubscribe(Duration::from_secs(1)).await;
    }
    let tallies = tallies.into_iter().map(|t| {
        let tally = std::mem::replace(&mut *t.lock().expect("not poisoned"), Tally::new(payload));
        tokio::spawn(async move { Ok(tally) })
    });
    Run::gather(start, confirmed, tallies.collect()).await.map_err(|e| failed(&e))
}

async fn direct_rabbitmq(
    url: &str,
    prefix: &str,
    messages: u64,
    payload: usize,
    mode: DeliveryMode,
) -> Result<Run, String> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let manual_ack = mode == DeliveryMode::AtLeastOnce;
    let conn = Connection::connect(url, ConnectionProperties::default()).await.map_err(err("connect"))?;
    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let mut consumers = Vec::new();
    for ((queue, _), want) in FANOUT_BINDINGS.iter().zip(wants) {
        let channel = conn.create_channel().await.map_err(err("channel"))?;
        if manual_ack {
            let prefetch = u16::try_from(PREFETCH_DEFAULT).unwrap_or(u16::MAX);
            channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(err("basic.qos"))?;
        }
        let options = BasicConsumeOptions { no_ack: !manual_ack, ..Default::default() };
        let queue = format!("{prefix}_{queue}");
        let mut consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), options, FieldTable::default())
            .await
            .map_err(err("basic.consume"))?;
        consumers.push(tokio::spawn(async move {
            let mut tally = Tally::new(payload);
            while tally.count < want {
                let delivery = match consumer.next().await {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(format!("consume: {e}")),
                    None => return Err("consumer cancelled by the broker".to_string()),
                };
                tally.handled(base, &delivery.data);
                if manual_ack {
                    delivery.acker.ack(BasicAckOptions::default()).await.map_err(err("basic.ack"))?;
                }
            }
            Ok(tally)
        }));
    }
    let channel = conn.create_channel().await.map_err(err("channel"))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(err("confirm.select"))?;
    let exchange = format!("{prefix}_fanout");
    let start = Instant::now();
    let publishes = stream::iter(0..messages).map(|i| {
        let (channel, exchange) = (&channel, &exchange);
        async move {
            let body = stamped(base, payload);
            let key = FANOUT_KEYS[(i % 8) as usize];
            // The properties tubemail sends: persistent, content type, message id.
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/msgpack".into())
                .with_message_id(i.to_string().into());
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let confirm = channel
                .basic_publish(exchange.as_str().into(), key.into(), options, &body, props)
                .await
                .map_err(err("basic.publish"))?;
            match confirm.await.map_err(err("publisher confirm"))? {
                c if c.is_ack() => Ok(()),
                _ => Err("publish nacked by the broker".to_string()),
            }
        }
    });
    let mut confirmed = 0_u64;
    let mut confirms = publishes.buffer_unordered(CONFIRM_WINDOW);
    while let Some(confirm) = confirms.next().await {
        confirm?;
        confirmed += 1;
    }
    let run = Run::gather(start, confirmed, consumers).await;
    let _ = conn.close(200, "bench done".into()).await;
    run
}

/// The shape through `async-nats` directly, on the streams tubemail declared: the publisher routes
/// as tubemail's client does (one copy to each target queue's stream, each acked), and one consumer
/// per queue pulls from the queue's durable consumer in batches of the prefetch and acks each
/// message (JetStream acks on every queue: at-most-once is the client acking on arrival).
async fn direct_jetstream(url: &str, prefix: &str, messages: u64, payload: usize) -> Result<Run, String> {
    use async_nats::jetstream::consumer::pull;
    use tubemail::ids::QueueId;
    use tubemail::routing::{RoutingTable, TopicKind};

    let client = async_nats::connect(url).await.map_err(err("connect"))?;
    let js = async_nats::jetstream::new(client);
    // Message ids unique across rounds: JetStream drops a repeated id within its window.
    let run = run_id();
    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let names: Vec<tubemail::remote::JetStreamNames> = FANOUT_BINDINGS
        .iter()
        .map(|(q, _)| tubemail::remote::jetstream_names(&format!("{prefix}_{q}")))
        .collect();
    let mut consumers = Vec::new();
    for (name, want) in names.iter().zip(wants) {
        let stream = js.get_stream(&name.stream).await.map_err(err("get stream"))?;
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
            stream.get_consumer(&name.consumer).await.map_err(err("get consumer"))?;
        let mut pulled = consumer
            .stream()
            .max_messages_per_batch(PREFETCH_DEFAULT as usize)
            .messages()
            .await
            .map_err(err("pull"))?;
        consumers.push(tokio::spawn(async move {
            let mut tally = Tally::new(payload);
            while tally.count < want {
                let message = match pulled.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(format!("pull: {e}")),
                    None => return Err("consumer stream ended".to_string()),
                };
                tally.handled(base, &message.payload);
                message.ack().await.map_err(|e| format!("ack: {e}"))?;
            }
            Ok(tally)
        }));
    }
    let mut table = RoutingTable::new(TopicKind::Topic);
    for (i, (_, pattern)) in FANOUT_BINDINGS.iter().enumerate() {
        table.bind(QueueId(i as u32), pattern, 1).expect("valid pattern");
    }
    let start = Instant::now();
    let publishes = stream::iter(0..messages).map(|i| {
        let (js, table, names, run) = (&js, &table, &names, &run);
        async move {
            let key = FANOUT_KEYS[(i % 8) as usize];
            let mut targets = smallvec::SmallVec::<[QueueId; 8]>::new();
            table.route(key, &mut targets);
            let body = bytes::Bytes::from(stamped(base, payload));
            let copies = targets.iter().map(|q| {
                // The headers tubemail sends: the key, the content type, and a message id that
                // JetStream deduplicates by (its work is part of what is measured, on both sides).
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Tubemail-Key", key);
                headers.insert("Content-Type", "application/msgpack");
                headers.insert("Nats-Msg-Id", format!("{run}-{i}").as_str());
                let subject = names[q.0 as usize].subject.clone();
                let body = body.clone();
                async move {
                    let ack =
                        js.publish_with_headers(subject, headers, body).await.map_err(err("publish"))?;
                    ack.await.map_err(err("publish ack")).map(|_| ())
                }
            });
            for copy in futures::future::join_all(copies).await {
                copy?;
            }
            Ok::<(), String>(())
        }
    });
    let mut confirmed = 0_u64;
    let mut confirms = publishes.buffer_unordered(CONFIRM_WINDOW);
    while let Some(confirm) = confirms.next().await {
        confirm?;
        confirmed += 1;
    }
    Run::gather(start, confirmed, consumers).await
}
