//! Declaring topics, queues and bindings: in code with a builder, or from a TOML file.
//!
//! A [`Topology`] is plain data: it names topics, queues and the bindings between them, with every
//! option at a documented default. [`Broker::start`](crate::Broker::start) turns it into actors;
//! [`Topology::from_toml_str`] and [`Topology::load`] read the file a user writes by hand:
//!
//! ```toml
//! [topics.events]
//! kind = "topic"
//! alternate = "unrouted"
//!
//! [queues.billing]
//! depth_max = 10000
//! overflow = "reject-publish"
//! delivery = "at-least-once"
//! ack_timeout_ms = 30000
//! delivery_limit = 20
//! dead_letter = "billing-dead"
//!
//! [queues.billing-dead]
//! [queues.unrouted]
//!
//! [[bindings]]
//! topic = "events"
//! queue = "billing"
//! key = "orders.*.paid"
//! ```
//!
//! # Defaults
//! | field | default | meaning |
//! |---|---|---|
//! | `kind` | `topic` | `topic` (AMQP `*`/`#` patterns), `direct`, `fanout`, `hash` |
//! | `alternate` | none | queue for messages no binding matches; without it they are counted as dropped |
//! | `depth_max` | 10,000 ([`DEPTH_MAX_DEFAULT`]) | ready messages the queue holds at most (1 to [`DEPTH_MAX_LIMIT`]) |
//! | `overflow` | `block` (a full queue slows its publishers; nothing is lost) | `drop-head`, `reject-publish`, `reject-publish-dlx`, `block` |
//! | `delivery` | `at-least-once` | or `at-most-once` |
//! | `ack_timeout_ms` | 30,000 | an unacked delivery is redelivered after this long (JetStream's AckWait) |
//! | `delivery_limit` | 20 | deliveries of one message before it is dead-lettered (quorum queues' default) |
//! | `dead_letter` | none | queue that receives rejected, expired, overflowed and over-limit messages |
//! | `message_ttl_ms` | none | ready messages older than this expire |
//! | `expires_ms` | none | the queue is deleted once it has had no consumer for this long |
//! | `auto_delete` | false | the queue is deleted when its last consumer leaves |
//! | `single_active_consumer` | false | only the first consumer receives; the next takes over when it leaves |
//! | `prefetch_default` | 64 | unacked deliveries per subscriber unless the subscription says otherwise |
//! | `durable` | false | the queue keeps a journal in `data_dir` and comes back after a restart or a kill -9 (needs `data_dir`; names of A-Z a-z 0-9 . _ -) |
//! | `fsync` | `interval` | a durable queue's journal: `always` (a publish is confirmed once on disk), `interval`, `never` (as streams') |
//! | binding `key` | `""` | routing key or pattern, at most 255 bytes |
//! | binding `weight` | 1 | share of keys for `hash` topics (1 to [`WEIGHT_MAX`](crate::routing::WEIGHT_MAX)) |
//!
//! # Streams
//! A stream (an event log, see [`crate::stream`]) is declared as `[streams.NAME]` and bound like a
//! queue, with `stream` in place of `queue`; `data_dir = "..."` at the top of the file keeps streams
//! on disk (without it they live in memory, with the same semantics minus survival):
//!
//! ```toml
//! data_dir = "var/tubemail"
//!
//! [streams.orders]
//! partitions = 4
//! retention_ms = 604800000
//! fsync = "always"
//!
//! [[bindings]]
//! topic = "events"
//! stream = "orders"
//! key = "orders.#"
//! ```
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `partitions` | 1 | 1 to 1,024; a key's records keep their order in one partition; fixed once on disk |
//! | `retention_ms` | none | closed segments whose newest record is older are deleted |
//! | `retention_bytes` | none | closed segments are deleted, oldest first, while a partition holds more |
//! | `retention_records` | none | closed segments are deleted while at least this many records stay without them |
//! | `cleanup` | `delete` | `delete`, `compact` (keep each key's last record) or `compact,delete` |
//! | `delete_retention_ms` | 86,400,000 | how long a tombstone (a key with no value) stays in a compacted stream |
//! | `segment_bytes` | 134,217,728 | a segment is closed past this size (4 KiB to 1 GiB) |
//! | `segment_ms` | 604,800,000 | ... or once its first record is this old |
//! | `max_record_bytes` | 1,048,576 | the largest record, key and value framed (up to 64 MiB) |
//! | `fsync` | `interval` | `always` (acked once on disk; appends share syncs), `interval`, `never` |
//! | `fsync_interval_ms` | 1,000 | the period of `interval` syncs |

mod file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::routing::TopicKind;
use crate::routing::{validate_pattern, RoutingError, WEIGHT_MAX};
pub use tubemail_log::{Cleanup, Fsync, StreamConfig as StreamSpec};

/// Default for [`QueueSpec::depth_max`].
pub const DEPTH_MAX_DEFAULT: usize = 10_000;
/// The largest `depth_max` accepted.
pub const DEPTH_MAX_LIMIT: usize = 16_777_216;
/// Default for [`QueueSpec::ack_timeout`]: 30 s, as JetStream's AckWait.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`QueueSpec::delivery_limit`]: 20, as RabbitMQ's quorum queues.
pub const DELIVERY_LIMIT_DEFAULT: u32 = 20;
/// The largest `delivery_limit` accepted.
pub const DELIVERY_LIMIT_MAX: u32 = 1_000_000;
/// Default for [`QueueSpec::prefetch_default`].
pub const PREFETCH_DEFAULT: u32 = 64;
/// The largest name of a topic or queue, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// The journal of the durable queue `q` is the stream `__queue.q` in the data directory.
pub const JOURNAL_PREFIX: &str = "__queue.";
/// The longest name of a durable queue: its journal's name must be a valid stream name.
pub const DURABLE_NAME_MAX: usize = tubemail_log::dir::NAME_MAX - JOURNAL_PREFIX.len();

/// What a queue does with a message that arrives when it already holds `depth_max` ready messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// The oldest ready message is dropped (or dead-lettered with reason `maxlen`): RabbitMQ's
    /// policy when a length limit is set. A dropping policy: choose it where losing the oldest is
    /// better than waiting, never by accident on an at-least-once queue.
    DropHead,
    /// The new message is refused and the publisher's confirm names the queue.
    RejectPublish,
    /// Refused as with `reject-publish`, and dead-lettered with reason `maxlen`.
    RejectPublishDlx,
    /// The publisher awaits room (`try_publish` hands the message back instead). The default: a full
    /// queue slows its publishers down and loses nothing, as RabbitMQ's credit flow does for its
    /// (unbounded by default) queues and as a JetStream stream does until a discard policy is chosen.
    #[default]
    Block,
}

impl Overflow {
    /// Whether the policy drops messages that a publisher's confirm said were routed.
    pub fn drops(self) -> bool {
        self == Overflow::DropHead
    }
}

/// The delivery promise of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Handed out once, never redelivered; lost (and counted) if the subscriber dies first.
    AtMostOnce,
    /// Kept until acked; redelivered after a crash, a nack or the ack deadline; may arrive twice.
    #[default]
    AtLeastOnce,
}

impl DeliveryMode {
    /// The mode's name, kebab-case as in topology files: `at-least-once`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::AtMostOnce => "at-most-once",
            DeliveryMode::AtLeastOnce => "at-least-once",
        }
    }
}

impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A topic: a router with a kind and an optional alternate queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// How keys are matched against bindings.
    pub kind: TopicKind,
    /// The queue that receives messages no binding matches.
    pub alternate: Option<String>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self::new(TopicKind::Topic)
    }
}

impl TopicSpec {
    /// A topic of the given kind, without an alternate queue.
    pub fn new(kind: TopicKind) -> Self {
        Self { kind, alternate: None }
    }

    /// Sets the alternate queue.
    pub fn alternate(mut self, queue: impl Into<String>) -> Self {
        self.alternate = Some(queue.into());
        self
    }
}

/// A queue's options. Every field has a documented default (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// Ready messages held at most.
    pub depth_max: usize,
    /// What happens when a message arrives at a full queue.
    pub overflow: Overflow,
    /// The delivery promise.
    pub delivery: DeliveryMode,
    /// How long a delivery may stay unacked before it is redelivered.
    pub ack_timeout: Duration,
    /// Deliveries of one message before it is dead-lettered with reason `delivery_limit`.
    pub delivery_limit: u32,
    /// The dead-letter queue.
    pub dead_letter: Option<String>,
    /// Time to live of ready messages.
    pub message_ttl: Option<Duration>,
    /// The queue is deleted after being without consumers this long.
    pub expires: Option<Duration>,
    /// The queue is deleted when its last consumer leaves.
    pub auto_delete: bool,
    /// Only one consumer receives at a time.
    pub single_active_consumer: bool,
    /// Prefetch of subscribers that do not set their own (0 = unlimited, up to `depth_max`).
    pub prefetch_default: u32,
    /// Whether the queue keeps a journal in the broker's data directory, from which it is rebuilt
    /// when the broker starts (see [`crate::queue`]'s "Durability"). Needs a data directory.
    pub durable: bool,
    /// When a durable queue's journal is forced to disk, as a stream's `fsync`: `always` (a publish
    /// is confirmed once on disk), `interval` (the default) or `never`; a process crash loses
    /// nothing confirmed under any of them.
    pub fsync: Fsync,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            depth_max: DEPTH_MAX_DEFAULT,
            overflow: Overflow::default(),
            delivery: DeliveryMode::default(),
            ack_timeout: ACK_TIMEOUT_DEFAULT,
            delivery_limit: DELIVERY_LIMIT_DEFAULT,
            dead_letter: None,
            message_ttl: None,
            expires: None,
            auto_delete: false,
            single_active_consumer: false,
            prefetch_default: PREFETCH_DEFAULT,
            durable: false,
            fsync: Fsync::default(),
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl QueueSpec {
    setter!(/// Sets [`QueueSpec::depth_max`].
        depth_max: usize);
    setter!(/// Sets [`QueueSpec::overflow`].
        overflow: Overflow);
    setter!(/// Sets [`QueueSpec::delivery`].
        delivery: DeliveryMode);
    setter!(/// Sets [`QueueSpec::ack_timeout`].
        ack_timeout: Duration);
    setter!(/// Sets [`QueueSpec::delivery_limit`].
        delivery_limit: u32);
    setter!(/// Sets [`QueueSpec::auto_delete`].
        auto_delete: bool);
    setter!(/// Sets [`QueueSpec::single_active_consumer`].
        single_active_consumer: bool);
    setter!(/// Sets [`QueueSpec::prefetch_default`].
        prefetch_default: u32);
    setter!(/// Sets [`QueueSpec::durable`].
        durable: bool);
    setter!(/// Sets [`QueueSpec::fsync`].
        fsync: Fsync);

    /// Sets the dead-letter queue.
    pub fn dead_letter(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }

    /// Sets the time to live of ready messages.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Deletes the queue once it has been without consumers this long.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }
}

/// What a binding routes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A queue, by name: the message is enqueued.
    Queue(String),
    /// A stream, by name: the message is appended.
    Stream(String),
}

impl Target {
    /// The queue's name, for a queue target.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Target::Queue(q) => Some(q),
            Target::Stream(_) => None,
        }
    }

    /// The stream's name, for a stream target.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Target::Stream(s) => Some(s),
            Target::Queue(_) => None,
        }
    }

    /// The name, whichever kind.
    pub fn name(&self) -> &str {
        match self {
            Target::Queue(n) | Target::Stream(n) => n,
        }
    }
}

/// A binding from a topic to a queue or a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingSpec {
    /// The topic's name.
    pub topic: String,
    /// The queue or stream it routes to.
    pub target: Target,
    /// The routing key (direct, hash) or pattern (topic); ignored by fanout topics.
    pub key: String,
    /// Share of keys for hash topics.
    pub weight: u32,
}

/// Where in a topology file something was declared, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The file, when the topology came from one.
    pub file: Option<PathBuf>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.column),
            None => write!(f, "line {}, column {}", self.line, self.column),
        }
    }
}

/// Why a topology is not valid. File errors carry the file, line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's words.
        reason: String,
    },
    /// The file is not valid TOML, or a field has the wrong type, an unknown name or an unknown value.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// What, naming the field.
        message: String,
    },
    /// A value is out of its range, or refers to something undeclared.
    #[error("{}{field}: {message}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Invalid {
        /// Where, when known.
        origin: Option<Origin>,
        /// The field, as `queues.billing.depth_max` or `bindings[2].queue`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The remote backend a `connect` URL names by its scheme: `rabbitmq` for `amqp://` and `amqps://`,
/// `nats` for `nats://` and `tls://`; `None` for any other.
pub(crate) fn remote_backend(url: &str) -> Option<&'static str> {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("amqp" | "amqps") => Some("rabbitmq"),
        Some("nats" | "tls") => Some("nats"),
        _ => None,
    }
}

impl TopologyError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { origin: None, field: field.into(), message: message.into() }
    }
}

/// Topics, queues and bindings. Names are kept in sorted maps, so iteration order never depends on
/// hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueSpec>,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamSpec>,
    /// Bindings, in declaration order.
    pub bindings: Vec<BindingSpec>,
    /// Where streams keep their files; `None` keeps them in memory. [`BrokerBuilder::data_dir`]
    /// overrides it.
    ///
    /// [`BrokerBuilder::data_dir`]: crate::BrokerBuilder::data_dir
    pub data_dir: Option<PathBuf>,
    /// The remote broker this topology runs on (`connect = "amqp://…"` or `"nats://…"`), read by
    /// [`Broker::connect`](crate::Broker::connect); `None` runs it in this process.
    pub connect: Option<String>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a topic.
    pub fn topic(mut self, name: impl Into<String>, spec: TopicSpec) -> Self {
        self.topics.insert(name.into(), spec);
        self
    }

    /// Declares a queue.
    pub fn queue(mut self, name: impl Into<String>, spec: QueueSpec) -> Self {
        self.queues.insert(name.into(), spec);
        self
    }

    /// Binds `queue` to `topic` with a key or pattern (weight 1).
    pub fn bind(self, topic: impl Into<String>, queue: impl Into<String>, key: impl Into<String>) -> Self {
        self.bind_weighted(topic, queue, key, 1)
    }

    /// Binds `queue` to `topic` with a key and a weight (for hash topics).
    pub fn bind_weighted(
        mut self,
        topic: impl Into<String>,
        queue: impl Into<String>,
        key: impl Into<String>,
        weight: u32,
    ) -> Self {
        let target = Target::Queue(queue.into());
        self.bindings.push(BindingSpec { topic: topic.into(), target, key: key.into(), weight });
        self
    }

    /// Declares a stream (an event log; see [`crate::stream`]).
    pub fn stream(mut self, name: impl Into<String>, spec: StreamSpec) -> Self {
        self.streams.insert(name.into(), spec);
        self
    }

    /// Binds `stream` to `topic` with a key or pattern: what is published there is appended to it.
    pub fn bind_stream(
        mut self,
        topic: impl Into<String>,
        stream: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        let target = Target::Stream(stream.into());
        self.bindings.push(BindingSpec { topic: topic.into(), target, key: key.into(), weight: 1 });
        self
    }

    /// Keeps streams in `dir` (created if missing); without one they live in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Reads a topology file.
    ///
    /// # Errors
    /// [`TopologyError::Io`] when the file cannot be read, otherwise as [`Topology::from_toml_str`], with
    /// the path in every origin.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TopologyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyError::Io { path: path.to_owned(), reason: e.to_string() })?;
        file::parse(&text, Some(path))
    }

    /// Parses the TOML form and validates it.
    ///
    /// # Errors
    /// [`TopologyError::Syntax`] for TOML errors, unknown fields, kinds or policies, with line and
    /// column; [`TopologyError::Invalid`] for values out of range and references to undeclared topics
    /// or queues, with the line of the offending field.
    pub fn from_toml_str(text: &str) -> Result<Self, TopologyError> {
        file::parse(text, None)
    }

    /// Checks names, ranges, references and patterns.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn validate(&self) -> Result<(), TopologyError> {
        for (name, topic) in &self.topics {
            check_name(&format!("topics.{name}"), name)?;
            if let Some(alt) = &topic.alternate {
                self.check_queue_ref(&format!("topics.{name}.alternate"), alt)?;
            }
        }
        for (name, queue) in &self.queues {
            check_name(&format!("queues.{name}"), name)?;
            self.validate_queue(name, queue)?;
        }
        for (name, stream) in &self.streams {
            let field = format!("streams.{name}");
            if name.starts_with("__") {
                return Err(TopologyError::invalid(field, "names starting with __ are the broker's own"));
            }
            tubemail_log::dir::validate_name(name)
                .map_err(|e| TopologyError::invalid(field.clone(), e.to_string()))?;
            if let Some((f, why)) = stream.problems().into_iter().next() {
                return Err(TopologyError::invalid(format!("{field}.{f}"), why));
            }
        }
        for (i, binding) in self.bindings.iter().enumerate() {
            self.validate_binding(i, binding)?;
        }
        Ok(())
    }

    /// Warnings about a valid topology: an at-least-once queue with a dropping overflow policy
    /// (`drop-head`) loses confirmed messages when it is full, which its delivery mode does not
    /// promise. `tubemail validate` prints them, and [`Broker::start`](crate::Broker::start) logs
    /// them through `tracing`.
    pub fn warnings(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, q)| q.delivery == DeliveryMode::AtLeastOnce && q.overflow.drops())
            .map(|(name, q)| {
                format!(
                    "queues.{name}: at-least-once with overflow \"drop-head\" drops confirmed messages once \
                     {} are ready (choose \"block\" or \"reject-publish\" to keep them)",
                    q.depth_max
                )
            })
            .collect()
    }

    fn validate_queue(&self, name: &str, q: &QueueSpec) -> Result<(), TopologyError> {
        let field = |f: &str| format!("queues.{name}.{f}");
        if q.depth_max == 0 || q.depth_max > DEPTH_MAX_LIMIT {
            return Err(TopologyError::invalid(
                field("depth_max"),
                format!("must be 1 to {DEPTH_MAX_LIMIT}"),
            ));
        }
        if q.ack_timeout.is_zero() {
            return Err(TopologyError::invalid(field("ack_timeout_ms"), "must be at least 1"));
        }
        if q.delivery_limit == 0 || q.delivery_limit > DELIVERY_LIMIT_MAX {
            return Err(TopologyError::invalid(
                field("delivery_limit"),
                format!("must be 1 to {DELIVERY_LIMIT_MAX}"),
            ));
        }
        if q.message_ttl.is_some_and(|t| t.is_zero()) {
            return Err(TopologyError::invalid(field("message_ttl_ms"), "must be at least 1"));
        }
        if q.expires.is_some_and(|t| t.is_zero()) {
            return Err(TopologyError::invalid(field("expires_ms"), "must be at least 1"));
        }
        if let Some(dl) = &q.dead_letter {
            self.check_queue_ref(&field("dead_letter"), dl)?;
        }
        if q.durable {
            if self.data_dir.is_none() {
                return Err(TopologyError::invalid(
                    field("durable"),
                    "a durable queue needs a data directory (`data_dir` in the file, or \
                     `Broker::builder(t).data_dir(path)`)",
                ));
            }
            let journal = format!("{JOURNAL_PREFIX}{name}");
            if tubemail_log::dir::validate_name(&journal).is_err() {
                return Err(TopologyError::invalid(
                    field("durable"),
                    format!(
                        "a durable queue's name is 1 to {} of A-Z a-z 0-9 . _ - (its journal is a stream)",
                        DURABLE_NAME_MAX
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_binding(&self, i: usize, b: &BindingSpec) -> Result<(), TopologyError> {
        let field = |f: &str| format!("bindings[{i}].{f}");
        let topic = self.topics.get(&b.topic).ok_or_else(|| {
            TopologyError::invalid(field("topic"), format!("no topic named {:?} is declared", b.topic))
        })?;
        match &b.target {
            Target::Queue(queue) => self.check_queue_ref(&field("queue"), queue)?,
            Target::Stream(stream) if !self.streams.contains_key(stream) => {
                return Err(TopologyError::invalid(
                    field("stream"),
                    format!("no stream named {stream:?} is declared"),
                ))
            }
            Target::Stream(_) => {}
        }
        validate_pattern(topic.kind, &b.key)
            .map_err(|e| TopologyError::invalid(field("key"), e.to_string()))?;
        validate_weight(b.weight).map_err(|e| TopologyError::invalid(field("weight"), e.to_string()))
    }

    fn check_queue_ref(&self, field: &str, queue: &str) -> Result<(), TopologyError> {
        if self.queues.contains_key(queue) {
            Ok(())
        } else {
            Err(TopologyError::invalid(field, format!("no queue named {queue:?} is declared")))
        }
    }
}

fn validate_weight(weight: u32) -> Result<(), RoutingError> {
    match weight {
        0 => Err(RoutingError::ZeroWeight),
        w if w > WEIGHT_MAX => Err(RoutingError::WeightTooLarge { weight }),
        _ => Ok(()),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), TopologyError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(TopologyError::invalid(field, format!("names must be 1 to {NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}
