//! `declare`, `diff` and `delete` on NATS JetStream: a topology's queues are streams with their
//! durable consumers (see `remote::nats`); topics and bindings live in the publishing client and have
//! no object on the server. The broker's side is every stream tubemail manages (named `TMQ_…`, its
//! description naming the queue), so streams of other applications are not drift.

use futures::StreamExt;

use super::compare::{conflict_error, drift, plan, Fields, Inventory, Seen};
use super::{Action, Drift, Object, Plan};
use crate::remote::nats::{consumer_config, stream_config, Nats, QUEUE_DESCRIPTION};
use crate::remote::{jetstream_names, redact, RemoteError, CONNECT_TIMEOUT};
use crate::topology::Topology;

const BACKEND: &str = "nats";

async fn connect(url: &str) -> Result<async_nats::jetstream::Context, RemoteError> {
    let options =
        async_nats::ConnectOptions::new().name("tubemail admin").connection_timeout(CONNECT_TIMEOUT);
    let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url))
        .await
        .map_err(|_| RemoteError::Connect { url: redact(url), reason: "timed out".to_owned() })?
        .map_err(|e| RemoteError::Connect { url: redact(url), reason: e.to_string() })?;
    Ok(async_nats::jetstream::new(client))
}

fn io(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> RemoteError {
    move |e| RemoteError::Io { backend: BACKEND, reason: format!("{what}: {e}") }
}

/// The fields compared: the stream's retention, limits, discard policy, age and subject, and its
/// consumer's ack wait.
fn fields(stream: &async_nats::jetstream::stream::Config, ack_wait_ms: Option<u128>) -> Fields {
    let mut f = Fields::new();
    f.insert("retention".into(), format!("{:?}", stream.retention));
    f.insert("max_msgs".into(), stream.max_messages.to_string());
    if stream.max_messages >= 0 {
        f.insert("discard".into(), format!("{:?}", stream.discard));
    }
    f.insert("max_age_ms".into(), stream.max_age.as_millis().to_string());
    f.insert("subjects".into(), stream.subjects.join(","));
    f.insert(
        "consumer_ack_wait_ms".into(),
        ack_wait_ms.map_or_else(|| "(no consumer)".into(), |ms| ms.to_string()),
    );
    f
}

fn desired(topology: &Topology) -> Inventory {
    topology
        .queues
        .iter()
        .map(|(name, spec)| {
            let ack_wait = consumer_config(name, spec).ack_wait.as_millis();
            (Object::queue(name.clone()), fields(&stream_config(name, spec), Some(ack_wait)))
        })
        .collect()
}

/// Every stream tubemail manages, as the queue it holds.
async fn seen(js: &async_nats::jetstream::Context) -> Result<Seen, RemoteError> {
    let mut inventory = Inventory::new();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|e| io("list streams")(&e))?;
        let config = info.config;
        if !config.name.starts_with("TMQ_") {
            continue;
        }
        let queue = config
            .description
            .as_deref()
            .and_then(|d| d.strip_prefix(QUEUE_DESCRIPTION))
            .map_or_else(|| config.name.clone(), str::to_owned);
        let consumer_name = jetstream_names(&queue).consumer;
        let stream = js.get_stream(&config.name).await.map_err(|e| io("get stream")(&e))?;
        let consumer: Result<
            async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
            _,
        > = stream.get_consumer(&consumer_name).await;
        let ack_wait = consumer.ok().map(|c| c.cached_info().config.ack_wait.as_millis());
        inventory.insert(Object::queue(queue), fields(&config, ack_wait));
    }
    Ok(Seen::All(inventory))
}

pub(super) async fn declare(url: &str, topology: &Topology, dry_run: bool) -> Result<Plan, RemoteError> {
    for (name, spec) in &topology.queues {
        if let Some(e) = crate::remote::nats::unsupported(name, spec) {
            return Err(e);
        }
    }
    let js = connect(url).await?;
    let desired = desired(topology);
    let seen = seen(&js).await?;
    let steps = plan(&desired, &seen, dry_run).map_err(|conflicts| conflict_error(BACKEND, &conflicts))?;
    if !dry_run && steps.iter().any(|s| s.action != Action::Exists) {
        Nats::connect(url, topology).await?;
    }
    let notes = if topology.topics.is_empty() {
        Vec::new()
    } else {
        vec!["topics and bindings have no object on NATS: the publishing client routes (docs/BACKENDS.md)"
            .to_owned()]
    };
    Ok(Plan { backend: BACKEND, url: redact(url), dry_run, steps, notes })
}

pub(super) async fn diff(url: &str, topology: &Topology) -> Result<Drift, RemoteError> {
    let js = connect(url).await?;
    let (missing, differs, extra, unchecked) = drift(&desired(topology), &seen(&js).await?);
    Ok(Drift { backend: BACKEND, url: redact(url), missing, differs, extra, unchecked })
}

pub(super) async fn delete(url: &str, topology: &Topology) -> Result<(), RemoteError> {
    let js = connect(url).await?;
    for name in topology.queues.keys() {
        // What is not there is skipped.
        let _ = js.delete_stream(jetstream_names(name).stream).await;
    }
    Ok(())
}
