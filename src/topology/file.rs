//! The TOML form of a [`Topology`]: parsing into spanned raw structs, building the model with the
//! defaults filled in, and turning every problem into a one-line error with file, line, column and field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::{
    BindingSpec, Cleanup, DeliveryMode, Fsync, Origin, Overflow, QueueSpec, StreamSpec, Target, TopicKind,
    TopicSpec, Topology, TopologyError,
};

/// Parses and validates a topology file; `path` only labels the errors.
pub(super) fn parse(text: &str, path: Option<&Path>) -> Result<Topology, TopologyError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
    let (topology, spans) = build(raw).map_err(|(field, span, message)| TopologyError::Invalid {
        origin: Some(origin_at(text, span.start, path)),
        field,
        message: message.to_owned(),
    })?;
    topology.validate().map_err(|err| match err {
        TopologyError::Invalid { origin: None, field, message } => {
            let origin = field_span(&spans, &field).map(|span| origin_at(text, span.start, path));
            TopologyError::Invalid { origin, field, message }
        }
        other => other,
    })?;
    Ok(topology)
}

/// The whole file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a topology table")]
struct RawFile {
    #[serde(default)]
    topics: BTreeMap<Spanned<String>, RawTopic>,
    #[serde(default)]
    queues: BTreeMap<Spanned<String>, RawQueue>,
    #[serde(default)]
    streams: BTreeMap<Spanned<String>, RawStream>,
    #[serde(default)]
    bindings: Vec<Spanned<RawBinding>>,
    data_dir: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
}

/// `[streams.NAME]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of stream options")]
struct RawStream {
    partitions: Option<Spanned<u32>>,
    retention_ms: Option<Spanned<u64>>,
    retention_bytes: Option<Spanned<u64>>,
    retention_records: Option<Spanned<u64>>,
    cleanup: Option<Spanned<Cleanup>>,
    delete_retention_ms: Option<Spanned<u64>>,
    segment_bytes: Option<Spanned<u64>>,
    segment_ms: Option<Spanned<u64>>,
    max_record_bytes: Option<Spanned<u32>>,
    fsync: Option<Spanned<Fsync>>,
    fsync_interval_ms: Option<Spanned<u64>>,
}

/// `[topics.NAME]`. Tables themselves are not `Spanned`: implicit tables (dotted keys) have no span.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of topic options")]
struct RawTopic {
    kind: Option<Spanned<TopicKind>>,
    alternate: Option<Spanned<String>>,
}

/// `[queues.NAME]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of queue options")]
struct RawQueue {
    depth_max: Option<Spanned<usize>>,
    overflow: Option<Spanned<Overflow>>,
    delivery: Option<Spanned<DeliveryMode>>,
    ack_timeout_ms: Option<Spanned<u64>>,
    delivery_limit: Option<Spanned<u32>>,
    dead_letter: Option<Spanned<String>>,
    message_ttl_ms: Option<Spanned<u64>>,
    expires_ms: Option<Spanned<u64>>,
    auto_delete: Option<Spanned<bool>>,
    single_active_consumer: Option<Spanned<bool>>,
    prefetch_default: Option<Spanned<u32>>,
    durable: Option<Spanned<bool>>,
    fsync: Option<Spanned<Fsync>>,
}

/// `[[bindings]]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a binding table with `topic` and `queue` (or `stream`)")]
struct RawBinding {
    topic: Spanned<String>,
    queue: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    weight: Option<Spanned<u32>>,
}

/// Byte spans of the fields present in the file, by field path (`queues.billing.depth_max`,
/// `bindings[2].key`), plus each table's own span (`queues.billing`, `bindings[2]`).
type Spans = HashMap<String, Range<usize>>;

/// Records the span of an optional field and returns its value.
fn take<T>(spans: &mut Spans, table: &str, field: &str, value: Option<Spanned<T>>) -> Option<T> {
    value.map(|v| {
        spans.insert(format!("{table}.{field}"), v.span());
        v.into_inner()
    })
}

fn build(raw: RawFile) -> Result<(Topology, Spans), (String, Range<usize>, &'static str)> {
    let mut spans = Spans::new();
    let mut topology = Topology::new();
    topology.data_dir = raw.data_dir.map(|d| {
        spans.insert("data_dir".to_owned(), d.span());
        PathBuf::from(d.into_inner())
    });
    if let Some(url) = raw.connect {
        let span = url.span();
        let url = url.into_inner();
        if super::remote_backend(&url).is_none() {
            let message = "names no backend: use amqp://… for RabbitMQ or nats://… for NATS JetStream";
            return Err(("connect".to_owned(), span, message));
        }
        spans.insert("connect".to_owned(), span);
        topology.connect = Some(url);
    }
    for (name, st) in raw.streams {
        let table = format!("streams.{}", name.get_ref());
        spans.insert(table.clone(), name.span());
        let d = StreamSpec::default();
        let s = &mut spans;
        let spec = StreamSpec {
            partitions: take(s, &table, "partitions", st.partitions).unwrap_or(d.partitions),
            retention_ms: take(s, &table, "retention_ms", st.retention_ms).or(d.retention_ms),
            retention_bytes: take(s, &table, "retention_bytes", st.retention_bytes).or(d.retention_bytes),
            retention_records: take(s, &table, "retention_records", st.retention_records)
                .or(d.retention_records),
            cleanup: take(s, &table, "cleanup", st.cleanup).unwrap_or(d.cleanup),
            delete_retention_ms: take(s, &table, "delete_retention_ms", st.delete_retention_ms)
                .unwrap_or(d.delete_retention_ms),
            segment_bytes: take(s, &table, "segment_bytes", st.segment_bytes).unwrap_or(d.segment_bytes),
            segment_ms: take(s, &table, "segment_ms", st.segment_ms).unwrap_or(d.segment_ms),
            max_record_bytes: take(s, &table, "max_record_bytes", st.max_record_bytes)
                .unwrap_or(d.max_record_bytes),
            fsync: take(s, &table, "fsync", st.fsync).unwrap_or(d.fsync),
            fsync_interval_ms: take(s, &table, "fsync_interval_ms", st.fsync_interval_ms)
                .unwrap_or(d.fsync_interval_ms),
        };
        topology.streams.insert(name.into_inner(), spec);
    }
    for (name, t) in raw.topics {
        let table = format!("topics.{}", name.get_ref());
        spans.insert(table.clone(), name.span());
        let spec = TopicSpec {
            kind: take(&mut spans, &table, "kind", t.kind).unwrap_or(TopicKind::Topic),
            alternate: take(&mut spans, &table, "alternate", t.alternate),
        };
        topology.topics.insert(name.into_inner(), spec);
    }
    for (name, q) in raw.queues {
        let table = format!("queues.{}", name.get_ref());
        spans.insert(table.clone(), name.span());
        let d = QueueSpec::default();
        let s = &mut spans;
        let ms = Duration::from_millis;
        let spec = QueueSpec {
            depth_max: take(s, &table, "depth_max", q.depth_max).unwrap_or(d.depth_max),
            overflow: take(s, &table, "overflow", q.overflow).unwrap_or(d.overflow),
            delivery: take(s, &table, "delivery", q.delivery).unwrap_or(d.delivery),
            ack_timeout: take(s, &table, "ack_timeout_ms", q.ack_timeout_ms).map_or(d.ack_timeout, ms),
            delivery_limit: take(s, &table, "delivery_limit", q.delivery_limit).unwrap_or(d.delivery_limit),
            dead_letter: take(s, &table, "dead_letter", q.dead_letter).or(d.dead_letter),
            message_ttl: take(s, &table, "message_ttl_ms", q.message_ttl_ms).map(ms).or(d.message_ttl),
            expires: take(s, &table, "expires_ms", q.expires_ms).map(ms).or(d.expires),
            auto_delete: take(s, &table, "auto_delete", q.auto_delete).unwrap_or(d.auto_delete),
            single_active_consumer: take(s, &table, "single_active_consumer", q.single_active_consumer)
                .unwrap_or(d.single_active_consumer),
            prefetch_default: take(s, &table, "prefetch_default", q.prefetch_default)
                .unwrap_or(d.prefetch_default),
            durable: take(s, &table, "durable", q.durable).unwrap_or(d.durable),
            fsync: take(s, &table, "fsync", q.fsync).unwrap_or(d.fsync),
        };
        topology.queues.insert(name.into_inner(), spec);
    }
    for (i, b) in raw.bindings.into_iter().enumerate() {
        let table = format!("bindings[{i}]");
        spans.insert(table.clone(), b.span());
        let b = b.into_inner();
        spans.insert(format!("{table}.topic"), b.topic.span());
        let whole = spans[&table].clone();
        let target = match (b.queue, b.stream) {
            (Some(queue), None) => {
                spans.insert(format!("{table}.queue"), queue.span());
                Target::Queue(queue.into_inner())
            }
            (None, Some(stream)) => {
                spans.insert(format!("{table}.stream"), stream.span());
                Target::Stream(stream.into_inner())
            }
            (Some(_), Some(stream)) => {
                return Err((
                    format!("{table}.stream"),
                    stream.span(),
                    "a binding names a queue or a stream, not both",
                ))
            }
            (None, None) => return Err((table, whole, "a binding needs `queue` or `stream`")),
        };
        let topic = b.topic.into_inner();
        let key = take(&mut spans, &table, "key", b.key).unwrap_or_default();
        let weight = take(&mut spans, &table, "weight", b.weight).unwrap_or(1);
        topology.bindings.push(BindingSpec { topic, target, key, weight });
    }
    Ok((topology, spans))
}

/// The span of `field`, or of the nearest enclosing table when the field was defaulted.
fn field_span(spans: &Spans, field: &str) -> Option<Range<usize>> {
    let mut path = field;
    loop {
        if let Some(span) = spans.get(path) {
            return Some(span.clone());
        }
        path = &path[..path.rfind(['.', '['])?];
    }
}

/// A TOML or type error from `toml`, as [`TopologyError::Syntax`] naming the field.
fn toml_error(text: &str, path: Option<&Path>, err: &toml::de::Error) -> TopologyError {
    let span = err.span();
    let start = span.as_ref().map_or(0, |s| s.start);
    let mut message =
        err.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let field = span.and_then(|span| {
        toml::from_str::<Node>(text)
            .ok()
            .and_then(|root| path_at(&root, &span))
            .or_else(|| guess_path(text, start))
    });
    if let Some(field) = field.filter(|f| !f.is_empty()) {
        message = format!("{message} ({field})");
    }
    TopologyError::Syntax { origin: origin_at(text, start, path), message }
}

/// Any TOML document, keeping the spans of keys and array elements, to name the field an error is at.
enum Node {
    Leaf,
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

macro_rules! leaf {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: serde::de::Error>(self, _: $ty) -> Result<Node, E> {
            Ok(Node::Leaf)
        })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    leaf!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Table(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
}

/// The path of the key or array element that starts last at or before the error (ties go to the
/// deeper one): the key itself for unknown fields, the key before the value for values, the
/// element for a `[[bindings]]` table with a missing field.
fn path_at(root: &Node, span: &Range<usize>) -> Option<String> {
    fn anchors(node: &Node, prefix: &str, out: &mut Vec<(usize, String)>) {
        match node {
            Node::Leaf => {}
            Node::Table(entries) => {
                for (key, value) in entries {
                    let path = if prefix.is_empty() {
                        key.get_ref().clone()
                    } else {
                        format!("{prefix}.{}", key.get_ref())
                    };
                    anchors(value, &path, out);
                    out.push((key.span().start, path));
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{prefix}[{i}]");
                    anchors(item.get_ref(), &path, out);
                    out.push((item.span().start, path));
                }
            }
        }
    }
    let mut all = Vec::new();
    anchors(root, "", &mut all);
    all.into_iter()
        .filter(|(start, _)| *start <= span.start)
        .max_by_key(|(start, path)| (*start, path.len()))
        .map(|(_, path)| path)
}

/// For errors where the document does not parse at all: the current `[table]` header (with the
/// index of `[[array]]` tables) and the key before `=` on the error's line.
fn guess_path(text: &str, offset: usize) -> Option<String> {
    let offset = floor_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text[..line_start].lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = dotted(name);
            let n = counts.entry(name.clone()).or_default();
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = dotted(name);
        }
    }
    let line = &text[line_start..offset];
    if line.trim_start().starts_with('[') {
        let name = line.trim_start().trim_start_matches('[');
        return Some(dotted(name.split(']').next().unwrap_or(name)));
    }
    let key = line.find('=').map(|eq| dotted(&line[..eq])).filter(|k| !k.is_empty());
    match key {
        Some(key) if table.is_empty() => Some(key),
        Some(key) => Some(format!("{table}.{key}")),
        None => Some(table),
    }
}

/// `a . "b"` as `a.b`.
fn dotted(key: &str) -> String {
    key.split('.').map(|k| k.trim().trim_matches(['"', '\''])).collect::<Vec<_>>().join(".")
}

fn floor_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// The 1-based line and column (in characters) of a byte offset.
fn origin_at(text: &str, offset: usize, path: Option<&Path>) -> Origin {
    let before = &text[..floor_boundary(text, offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Origin {
        file: path.map(Path::to_path_buf),
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}
