//! `declare`, `diff` and `delete` on RabbitMQ: the objects a topology maps to (as
//! [`RabbitMq::declare`] declares them), and what the broker has, from the management API or,
//! without it, from passive declarations.

use std::collections::BTreeSet;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{ConnectionProperties, ExchangeKind};

use super::compare::{conflict_error, drift, plan, quoted, Fields, Inventory, Seen};
use super::management::Management;
use super::{Action, Drift, Object, Plan};
use crate::remote::rabbitmq::{
    alternate_exchange, binding_key, exchange_kind, int, queue_arguments, queue_options, queue_type, text,
    RabbitMq,
};
use crate::remote::{redact, Backend, RemoteError, CONNECT_TIMEOUT};
use crate::topology::{Target, Topology};

const BACKEND: &str = "rabbitmq";

pub(super) async fn declare(url: &str, topology: &Topology, dry_run: bool) -> Result<Plan, RemoteError> {
    let rabbit = connect(url).await?;
    let planned = declare_on(&rabbit, url, topology, dry_run).await;
    rabbit.close().await;
    planned
}

async fn declare_on(
    rabbit: &RabbitMq,
    url: &str,
    topology: &Topology,
    dry_run: bool,
) -> Result<Plan, RemoteError> {
    let desired = desired(topology);
    let seen = seen(rabbit, url, &desired).await?;
    let steps = plan(&desired, &seen, dry_run).map_err(|conflicts| conflict_error(BACKEND, &conflicts))?;
    if !dry_run && steps.iter().any(|s| s.action != Action::Exists) {
        rabbit.declare(topology).await?;
    }
    let notes = match seen {
        Seen::All(_) => Vec::new(),
        Seen::Existing { why, .. } => vec![format!(
            "what existed was found by passive declarations: bindings cannot be found so, and fields \
             were not compared; {why}"
        )],
    };
    Ok(Plan { backend: BACKEND, url: redact(url), dry_run, steps, notes })
}

pub(super) async fn diff(url: &str, topology: &Topology) -> Result<Drift, RemoteError> {
    let rabbit = connect(url).await?;
    let desired = desired(topology);
    let seen = seen(&rabbit, url, &desired).await;
    rabbit.close().await;
    let (missing, differs, extra, unchecked) = drift(&desired, &seen?);
    Ok(Drift { backend: BACKEND, url: redact(url), missing, differs, extra, unchecked })
}

pub(super) async fn delete(url: &str, topology: &Topology) -> Result<(), RemoteError> {
    let rabbit = connect(url).await?;
    let mut deleted = Ok(());
    for object in desired(topology).keys().filter(|o| !o.is_binding()) {
        deleted = delete_one(&rabbit, object).await;
        if deleted.is_err() {
            break;
        }
    }
    rabbit.close().await;
    deleted
}

/// A connection that declares nothing by itself, and does not recover: a command that cannot reach
/// the broker says so at once instead of retrying.
async fn connect(url: &str) -> Result<RabbitMq, RemoteError> {
    let props = ConnectionProperties::default().with_connection_name("tubemail admin".into());
    match tokio::time::timeout(CONNECT_TIMEOUT, RabbitMq::connect_with(url, props, &Topology::new())).await {
        Ok(connected) => connected,
        Err(_) => Err(RemoteError::Connect {
            url: redact(url),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

/// What RabbitMQ has: all of the virtual host from the management API, else which of `desired`'s
/// queues and exchanges exist.
async fn seen(rabbit: &RabbitMq, url: &str, desired: &Inventory) -> Result<Seen, RemoteError> {
    let listed = match Management::for_amqp(url) {
        Ok(api) => api.inventory().await,
        Err(e) => Err(e),
    };
    let why = match listed {
        Ok(inventory) => return Ok(Seen::All(inventory)),
        Err(e) => e.to_string(),
    };
    let mut objects = BTreeSet::new();
    for object in desired.keys().filter(|o| !o.is_binding()) {
        if exists(rabbit, object).await? {
            objects.insert(object.clone());
        }
    }
    Ok(Seen::Existing { objects, why })
}

/// Whether a queue or an exchange exists, by a passive declaration.
async fn exists(rabbit: &RabbitMq, object: &Object) -> Result<bool, RemoteError> {
    // A passive declaration of what does not exist closes its channel: one each.
    let channel = rabbit.channel().await?;
    let answer = match object {
        Object::Queue { name } => {
            let options = QueueDeclareOptions { passive: true, ..Default::default() };
            channel.queue_declare(name.as_str().into(), options, FieldTable::default()).await.map(drop)
        }
        Object::Exchange { name } | Object::AlternateExchange { name } => {
            let options = ExchangeDeclareOptions { passive: true, ..Default::default() };
            let kind = ExchangeKind::Direct;
            channel.exchange_declare(name.as_str().into(), kind, options, FieldTable::default()).await
        }
        Object::Binding { .. } | Object::ExchangeBinding { .. } => return Ok(false),
    };
    found(answer, &channel, object, "passive declaration").await
}

async fn delete_one(rabbit: &RabbitMq, object: &Object) -> Result<(), RemoteError> {
    let channel = rabbit.channel().await?;
    let answer = match object {
        Object::Queue { name } => {
            channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.map(drop)
        }
        Object::Exchange { name } | Object::AlternateExchange { name } => {
            channel.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()).await
        }
        // A binding goes with its queue or exchange.
        Object::Binding { .. } | Object::ExchangeBinding { .. } => return Ok(()),
    };
    found(answer, &channel, object, "delete").await.map(drop)
}

/// Whether the broker found `object`: `false` for its `NOT_FOUND`, which closed the channel.
async fn found(
    answer: Result<(), lapin::Error>,
    channel: &lapin::Channel,
    object: &Object,
    what: &str,
) -> Result<bool, RemoteError> {
    match answer {
        Ok(()) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(true)
        }
        Err(e) if e.to_string().contains("NOT_FOUND") => Ok(false),
        Err(e) => Err(RemoteError::Io { backend: BACKEND, reason: format!("{what} of {object}: {e}") }),
    }
}

/// The objects `topology` declares on RabbitMQ, with their fields as the management API shows them.
pub(super) fn desired(topology: &Topology) -> Inventory {
    let mut inventory = Inventory::new();
    for (name, spec) in &topology.queues {
        let mut fields: Fields = queue_arguments(spec)
            .into_iter()
            .filter(|(argument, _)| *argument != "x-queue-type")
            .map(|(argument, v)| (argument.to_owned(), value(&v)))
            .collect();
        let options = queue_options(spec);
        fields.insert("type".to_owned(), quoted(queue_type(spec)));
        fields.insert("durable".to_owned(), options.durable.to_string());
        fields.insert("auto_delete".to_owned(), options.auto_delete.to_string());
        inventory.insert(Object::queue(name), fields);
    }
    for (name, spec) in &topology.topics {
        let mut fields = exchange_fields(&exchange_kind(spec.kind));
        if let Some(queue) = &spec.alternate {
            let exchange = alternate_exchange(name);
            fields.insert("alternate-exchange".to_owned(), quoted(&exchange));
            inventory.insert(Object::exchange(&exchange), exchange_fields(&ExchangeKind::Fanout));
            inventory.insert(Object::binding(exchange, queue, ""), Fields::new());
        }
        inventory.insert(Object::exchange(name), fields);
    }
    for b in &topology.bindings {
        let (Target::Queue(queue), Some(topic)) = (&b.target, topology.topics.get(&b.topic)) else {
            continue;
        };
        let key = binding_key(topic.kind, &b.key, b.weight);
        inventory.insert(Object::binding(&b.topic, queue, key), Fields::new());
    }
    inventory
}

/// An exchange's fields as [`RabbitMq::declare`] declares it: durable, not auto-deleted.
fn exchange_fields(kind: &ExchangeKind) -> Fields {
    let kind = match kind {
        ExchangeKind::Custom(custom) => custom.as_str(),
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::Headers => "headers",
        ExchangeKind::Topic => "topic",
    };
    let mut fields = Fields::new();
    fields.insert("type".to_owned(), quoted(kind));
    fields.insert("durable".to_owned(), "true".to_owned());
    fields.insert("auto_delete".to_owned(), "false".to_owned());
    fields
}

/// An argument's value as the management API shows it: strings quoted, numbers and booleans bare.
fn value(v: &AMQPValue) -> String {
    match (text(v), int(v), v) {
        (Some(s), _, _) => quoted(&s),
        (_, Some(n), _) => n.to_string(),
        (_, _, AMQPValue::Boolean(b)) => b.to_string(),
        (_, _, other) => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Overflow, QueueSpec, TopicKind, TopicSpec};

    #[test]
    fn a_topology_maps_to_queues_exchanges_alternates_and_bindings() {
        let topology = Topology::new()
            .topic("events", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
            .topic("shards", TopicSpec::new(TopicKind::Hash))
            .queue("billing", QueueSpec::default().depth_max(100).overflow(Overflow::RejectPublish))
            .queue("unrouted", QueueSpec::default())
            .bind("events", "billing", "orders.#")
            .bind_weighted("shards", "billing", "", 3);
        let d = desired(&topology);
        let alternate = alternate_exchange("events");
        assert!(alternate.starts_with(crate::remote::admin::ALTERNATE_PREFIX), "{alternate}");
        let billing = &d[&Object::queue("billing")];
        assert_eq!(billing["type"], "\"quorum\"");
        assert_eq!(billing["x-overflow"], "\"reject-publish\"");
        assert_eq!(billing["x-max-length"], "99", "a quorum queue holds one more than x-max-length");
        assert!(!billing.contains_key("x-queue-type"), "the queue type is the `type` field");
        assert_eq!(d[&Object::exchange("events")]["alternate-exchange"], quoted(&alternate));
        assert_eq!(d[&Object::exchange("shards")]["type"], "\"x-consistent-hash\"");
        assert_eq!(d[&Object::exchange(&alternate)]["type"], "\"fanout\"");
        assert!(d.contains_key(&Object::binding(&alternate, "unrouted", "")));
        assert!(d.contains_key(&Object::binding("events", "billing", "orders.#")));
        assert!(
            d.contains_key(&Object::binding("shards", "billing", "3")),
            "a hash binding's key is its weight"
        );
        assert_eq!(d.len(), 2 + 3 + 3);
    }
}
