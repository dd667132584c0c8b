//! Declaring a topology on a remote broker, and comparing the two: the library half of
//! `tubemail declare` and `tubemail diff`.
//!
//! [`declare`] creates what a topology declares, object by object, and says which objects were there
//! already; declaring again creates nothing. [`diff`] reports drift in both directions: what the
//! file declares that the broker lacks or has otherwise, and what the broker has that the file does
//! not declare.
//!
//! ```no_run
//! # async fn run() -> Result<(), tubemail::remote::RemoteError> {
//! use tubemail::remote::admin;
//!
//! let topology = tubemail::Topology::load("shop.toml").expect("a valid file");
//! let url = "amqp://guest:guest@127.0.0.1:5672/shop";
//! println!("{}", admin::declare(url, &topology, false).await?);
//! assert!(admin::diff(url, &topology).await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! # What is compared
//! On RabbitMQ a topology is queues (the type and `x-…` arguments that
//! [`BrokerBuilder::connect`](crate::BrokerBuilder::connect) declares them with), exchanges (the
//! topic's kind as the exchange type, its `alternate-exchange`), alternate exchanges (a fanout
//! exchange `tubemail.alternate.TOPIC` bound to the alternate queue) and bindings (the key, or a
//! `hash` topic's weight). Queues and exchanges are compared field by field: type, durability,
//! auto-delete, arguments. A binding is its exchange, queue and key: it exists or not.
//!
//! The broker's side is the virtual host the URL names, all of it: anything there that the file does
//! not declare is drift, except RabbitMQ's own objects (the default exchange and its implicit
//! bindings, the `amq.*` exchanges) and exclusive queues (a connection's private queue, gone with
//! it). A diff means something when each application has a virtual host of its own
//! (`amqp://…:5672/billing`).
//!
//! On NATS JetStream a topology is its queues: a stream each (retention, `max_msgs`, discard policy,
//! age, subject) with its durable consumer (ack wait); topics and bindings live in the publishing
//! client and have no server object. The broker's side is every stream tubemail manages (`TMQ_…`,
//! its description naming the queue): other applications' streams are not drift.
//!
//! # Where the broker's side comes from
//! AMQP cannot list what a broker has: both functions read RabbitMQ's management API (HTTP, the
//! `rabbitmq_management` plugin) at port 15672 of the AMQP URL's host, with its user and password,
//! or where the environment variable `RABBITMQ_MANAGEMENT_URL` says
//! (`http://user:password@host:port`). When the API does not answer, [`declare`] still declares,
//! telling what existed by passive declarations (queues and exchanges; bindings are declared without
//! knowing), and [`diff`] checks only that the file's queues and exchanges exist; both say in
//! [`Plan::notes`] and [`Drift::unchecked`] what they could not check, and how to enable the API.
//!
//! # Failure
//! A declaration RabbitMQ would refuse (an object that exists with other arguments) is not
//! attempted: [`declare`] declares nothing and its error names every such object. Dropping a
//! `declare` future part way leaves what it had declared: declare again, it is idempotent.

use std::fmt;

use serde::Serialize;

use super::{Endpoint, RemoteError};
use crate::topology::Topology;

mod compare;
#[cfg(feature = "rabbitmq")]
mod management;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

/// The name prefix of the exchanges that take a topic's unroutable messages to its alternate queue.
pub(crate) const ALTERNATE_PREFIX: &str = "tubemail.alternate.";

/// One object on a remote broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Object {
    /// A queue.
    Queue {
        /// Its name.
        name: String,
    },
    /// An exchange: a topic.
    Exchange {
        /// Its name.
        name: String,
    },
    /// The exchange that takes a topic's unroutable messages to its alternate queue
    /// (`tubemail.alternate.TOPIC`).
    AlternateExchange {
        /// Its name.
        name: String,
    },
    /// A binding of a queue to an exchange.
    Binding {
        /// The exchange.
        exchange: String,
        /// The queue.
        queue: String,
        /// The binding key (a `hash` topic's weight, empty for `fanout`).
        key: String,
    },
    /// A binding of an exchange to an exchange: tubemail makes none, a diff may find some.
    ExchangeBinding {
        /// The source exchange.
        exchange: String,
        /// The destination exchange.
        destination: String,
        /// The binding key.
        key: String,
    },
}

impl Object {
    /// A queue.
    pub fn queue(name: impl Into<String>) -> Object {
        Object::Queue { name: name.into() }
    }

    /// An exchange: an alternate exchange when its name says so (`tubemail.alternate.…`).
    pub fn exchange(name: impl Into<String>) -> Object {
        let name = name.into();
        match name.starts_with(ALTERNATE_PREFIX) {
            true => Object::AlternateExchange { name },
            false => Object::Exchange { name },
        }
    }

    /// A binding of `queue` to `exchange` with `key`.
    pub fn binding(exchange: impl Into<String>, queue: impl Into<String>, key: impl Into<String>) -> Object {
        Object::Binding { exchange: exchange.into(), queue: queue.into(), key: key.into() }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Queue { name } => write!(f, "queue {name}"),
            Object::Exchange { name } => write!(f, "exchange {name}"),
            Object::AlternateExchange { name } => write!(f, "alternate exchange {name}"),
            Object::Binding { exchange, queue, key } => {
                write!(f, "binding {exchange} -> queue {queue} key {key:?}")
            }
            Object::ExchangeBinding { exchange, destination, key } => {
                write!(f, "binding {exchange} -> exchange {destination} key {key:?}")
            }
        }
    }
}

/// What [`declare`] did, or would do, with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// On the broker already, as the topology declares it.
    Exists,
    /// Not on the broker: created.
    Created,
    /// Not on the broker: a dry run creates nothing.
    WouldCreate,
    /// Declared without knowing whether it existed (a binding, when the management API does not
    /// answer; declaring a binding again changes nothing).
    Declared,
    /// Not known, and a dry run does not declare it (a binding, when the management API does not
    /// answer).
    Unknown,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Exists => "exists",
            Action::Created => "created",
            Action::WouldCreate => "would create",
            Action::Declared => "declared",
            Action::Unknown => "unknown",
        }
    }
}

/// One object of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The object.
    #[serde(flatten)]
    pub object: Object,
    /// What was done with it.
    pub action: Action,
}

/// What [`declare`] found and did, object by object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `rabbitmq` or `nats`.
    pub backend: &'static str,
    /// The broker's URL, without its password.
    pub url: String,
    /// Whether this was a dry run, which creates nothing.
    pub dry_run: bool,
    /// Every object the topology declares: queues, exchanges, alternate exchanges, bindings.
    pub steps: Vec<Step>,
    /// What could not be checked, and why.
    pub notes: Vec<String>,
}

impl Plan {
    /// The objects created, or on a dry run to be created.
    pub fn creates(&self) -> usize {
        self.count(|a| matches!(a, Action::Created | Action::WouldCreate))
    }

    fn count(&self, which: impl Fn(Action) -> bool) -> usize {
        self.steps.iter().filter(|s| which(s.action)).count()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dry = if self.dry_run { " (dry run: nothing is created)" } else { "" };
        writeln!(f, "declare on {} {}{dry}", self.backend, self.url)?;
        for step in &self.steps {
            writeln!(f, "  {:<13} {}", step.action.as_str(), step.object)?;
        }
        let created = if self.dry_run { "to create" } else { "created" };
        write!(f, "{} {created}, {} existed", self.creates(), self.count(|a| a == Action::Exists))?;
        let unknown = self.count(|a| matches!(a, Action::Declared | Action::Unknown));
        if unknown > 0 {
            write!(f, ", {unknown} not known")?;
        }
        for note in &self.notes {
            write!(f, "\nnote: {note}")?;
        }
        Ok(())
    }
}

/// One field of an object that the file and the broker have otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The object.
    pub object: Object,
    /// The field: `type`, `durable`, `auto_delete`, or an argument (`x-max-length`).
    pub field: String,
    /// Its value as the file declares it (strings quoted); `None` where the file sets none.
    pub file: Option<String>,
    /// Its value on the broker; `None` where the broker has none.
    pub broker: Option<String>,
}

/// How a remote broker differs from a topology, from [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// `rabbitmq` or `nats`.
    pub backend: &'static str,
    /// The broker's URL, without its password.
    pub url: String,
    /// Declared in the file, not on the broker.
    pub missing: Vec<Object>,
    /// On the broker with another type or other arguments than the file declares.
    pub differs: Vec<Difference>,
    /// On the broker, not in the file.
    pub extra: Vec<Object>,
    /// What could not be checked, why, and how to make it checkable; empty when the diff is
    /// complete.
    pub unchecked: Vec<String>,
}

impl Drift {
    /// Whether no drift was found (see [`Drift::is_complete`] for whether everything was checked).
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.differs.is_empty() && self.extra.is_empty()
    }

    /// Whether both directions were checked in full.
    pub fn is_complete(&self) -> bool {
        self.unchecked.is_empty()
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "diff of the topology and {} {}", self.backend, self.url)?;
        if !self.missing.is_empty() {
            writeln!(f, "in the file, missing on the broker:")?;
            for object in &self.missing {
                writeln!(f, "  {object}")?;
            }
        }
        if !self.differs.is_empty() {
            writeln!(f, "in both, otherwise on the broker:")?;
            let width = self.differs.iter().map(|d| d.object.to_string().len()).max().unwrap_or(0);
            let field = self.differs.iter().map(|d| d.field.len()).max().unwrap_or(0);
            let none = || "(none)".to_owned();
            for d in &self.differs {
                let (file, broker) =
                    (d.file.clone().unwrap_or_else(none), d.broker.clone().unwrap_or_else(none));
                let object = d.object.to_string();
                writeln!(f, "  {object:<width$}  {:<field$}  file {file}, broker {broker}", d.field)?;
            }
        }
        if !self.extra.is_empty() {
            writeln!(f, "on the broker, not in the file:")?;
            for object in &self.extra {
                writeln!(f, "  {object}")?;
            }
        }
        let drifts = self.missing.len() + self.differs.len() + self.extra.len();
        match (drifts, self.is_complete()) {
            (0, true) => write!(f, "no drift")?,
            (0, false) => write!(f, "no drift in what could be checked")?,
            (n, _) => write!(f, "{n} difference{}", if n == 1 { "" } else { "s" })?,
        }
        for what in &self.unchecked {
            write!(f, "\nnot checked: {what}")?;
        }
        Ok(())
    }
}

/// Declares on the remote broker at `url` every queue, exchange and binding `topology` declares,
/// and says object by object whether it existed; with `dry_run`, creates nothing and says what it
/// would create.
///
/// Declaring is idempotent: a second `declare` creates nothing. The topology's `connect` line is
/// not read: `url` says where.
///
/// # Errors
/// [`RemoteError::UnknownScheme`] for a URL of no backend; [`RemoteError::Connect`] when the broker
/// cannot be reached; [`RemoteError::Declare`] when an object exists with other arguments (nothing
/// is declared then; the error names each) or the broker refuses one; [`RemoteError::Unsupported`]
/// for streams (they live in process) and for what the backend cannot hold (NATS: single active
/// consumer, `expires`, `auto_delete`); [`RemoteError::NotBuilt`] without the backend's feature.
///
/// # Cancellation
/// Dropped part way, what was declared stays declared.
pub async fn declare(url: &str, topology: &Topology, dry_run: bool) -> Result<Plan, RemoteError> {
    match checked(url, topology)? {
        #[cfg(feature = "rabbitmq")]
        Endpoint::RabbitMq(url) => rabbitmq::declare(&url, topology, dry_run).await,
        #[cfg(not(feature = "rabbitmq"))]
        Endpoint::RabbitMq(_) => {
            let _ = dry_run;
            Err(RemoteError::NotBuilt { backend: "rabbitmq", feature: "rabbitmq" })
        }
        #[cfg(feature = "nats")]
        Endpoint::Nats(url) => nats::declare(&url, topology, dry_run).await,
        #[cfg(not(feature = "nats"))]
        Endpoint::Nats(_) => Err(RemoteError::NotBuilt { backend: "nats", feature: "nats" }),
    }
}

/// Compares `topology` with what the remote broker at `url` has, in both directions.
///
/// # Errors
/// As [`declare`]; an unanswered management API is not an error but a note in
/// [`Drift::unchecked`].
pub async fn diff(url: &str, topology: &Topology) -> Result<Drift, RemoteError> {
    match checked(url, topology)? {
        #[cfg(feature = "rabbitmq")]
        Endpoint::RabbitMq(url) => rabbitmq::diff(&url, topology).await,
        #[cfg(not(feature = "rabbitmq"))]
        Endpoint::RabbitMq(_) => Err(RemoteError::NotBuilt { backend: "rabbitmq", feature: "rabbitmq" }),
        #[cfg(feature = "nats")]
        Endpoint::Nats(url) => nats::diff(&url, topology).await,
        #[cfg(not(feature = "nats"))]
        Endpoint::Nats(_) => Err(RemoteError::NotBuilt { backend: "nats", feature: "nats" }),
    }
}

/// Deletes from the remote broker at `url` the queues (with the messages in them), exchanges and
/// alternate exchanges `topology` declares; their bindings go with them. What is not there is
/// skipped. For the demo and tests, which clean up after themselves.
///
/// # Errors
/// As [`declare`].
pub async fn delete(url: &str, topology: &Topology) -> Result<(), RemoteError> {
    match checked(url, topology)? {
        #[cfg(feature = "rabbitmq")]
        Endpoint::RabbitMq(url) => rabbitmq::delete(&url, topology).await,
        #[cfg(not(feature = "rabbitmq"))]
        Endpoint::RabbitMq(_) => Err(RemoteError::NotBuilt { backend: "rabbitmq", feature: "rabbitmq" }),
        #[cfg(feature = "nats")]
        Endpoint::Nats(url) => nats::delete(&url, topology).await,
        #[cfg(not(feature = "nats"))]
        Endpoint::Nats(_) => Err(RemoteError::NotBuilt { backend: "nats", feature: "nats" }),
    }
}

/// The endpoint of `url`, once `topology` is known to be one a remote broker can hold.
fn checked(url: &str, topology: &Topology) -> Result<Endpoint, RemoteError> {
    let endpoint = Endpoint::parse(url)?;
    let backend = endpoint.backend();
    topology.validate().map_err(|e| RemoteError::Declare {
        backend,
        what: "the topology".to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(stream) = topology.streams.keys().next() {
        return Err(RemoteError::Unsupported {
            backend,
            what: format!("keep stream {stream:?}"),
            hint: "streams live in process: declare a topology without them".to_owned(),
        });
    }
    Ok(endpoint)
}
