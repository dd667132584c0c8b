//! Messages as they travel: one shared, immutable [`Message`] per publish, whatever the fan-out.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// A typed value inside a [`Payload`]: any `Serialize + Send + Sync + 'static` type is one. One
/// pointer to the value and one to this trait's table, where a name and an encoder beside the value
/// took three more words in every message.
pub trait TypedValue: Any + Send + Sync {
    /// The value's type name, for error messages.
    fn type_name(&self) -> &'static str;
    /// The value as MessagePack (rmp-serde, named fields).
    ///
    /// # Errors
    /// When the value's `Serialize` implementation fails.
    fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error>;
}

impl<T: Serialize + Send + Sync + 'static> TypedValue for T {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }
}

/// The body of a message: a typed value shared by reference, or raw bytes.
///
/// A typed value is never encoded on the in-process path: every queue and subscriber shares the one
/// `Arc`. Bytes (MessagePack, through rmp-serde) appear only where bytes are needed: a subscriber that
/// asks for [`Bytes`], a subscriber of a typed value published as bytes, and recorded histories.
#[derive(Clone)]
pub enum Payload {
    /// A value published with a type.
    Value(Arc<dyn TypedValue>),
    /// Raw bytes (MessagePack when a typed subscriber reads them), shared as they are.
    Bytes(Bytes),
}

impl Payload {
    /// Wraps a typed value.
    pub fn value<T: Serialize + Send + Sync + 'static>(value: T) -> Self {
        Payload::Value(Arc::new(value))
    }

    /// The payload as MessagePack bytes (a cheap clone for [`Payload::Bytes`]).
    ///
    /// # Errors
    /// When the value cannot be encoded.
    pub fn to_bytes(&self) -> Result<Bytes, PayloadError> {
        match self {
            Payload::Bytes(b) => Ok(b.clone()),
            Payload::Value(value) => value
                .encode()
                .map(Bytes::from)
                .map_err(|e| PayloadError::Encode { type_name: value.type_name(), reason: e.to_string() }),
        }
    }

    /// The payload as a `T`: the shared value itself when it was published as a `T`, decoded from
    /// MessagePack when it was published as bytes, and [`Bytes`] on request.
    ///
    /// # Errors
    /// [`PayloadError::TypeMismatch`] when a value of another type was published;
    /// [`PayloadError::Decode`] when bytes do not decode as `T`.
    pub fn read<T: DeserializeOwned + Send + Sync + 'static>(&self) -> Result<Arc<T>, PayloadError> {
        match self.read_value::<T>()? {
            Value::Owned(v) => Ok(Arc::new(v)),
            Value::InMessage => match self {
                Payload::Value(value) => Ok(Payload::any(value.clone()).downcast::<T>().expect("checked")),
                Payload::Bytes(b) => match Value::<T>::bytes(b.clone()) {
                    Value::Owned(v) => Ok(Arc::new(v)),
                    Value::InMessage => unreachable!("Value::bytes always owns"),
                },
            },
        }
    }

    /// The payload as a `&T`, when it holds a `T` (a value published as `T`, or bytes read as
    /// [`Bytes`]); no copy, no decoding.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        match self {
            Payload::Value(value) => (&**value as &dyn Any).downcast_ref::<T>(),
            Payload::Bytes(b) => (b as &dyn Any).downcast_ref::<T>(),
        }
    }

    /// The shared value as `Any`, to downcast it.
    pub(crate) fn any(value: Arc<dyn TypedValue>) -> Arc<dyn Any + Send + Sync> {
        value
    }

    /// As [`Payload::read`], without touching the payload where it already holds a `T`.
    pub(crate) fn read_value<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
    ) -> Result<Value<T>, PayloadError> {
        if self.get::<T>().is_some() {
            return Ok(Value::InMessage);
        }
        let expected = std::any::type_name::<T>();
        match self {
            Payload::Value(_) if TypeId::of::<T>() == TypeId::of::<Bytes>() => {
                Ok(Value::bytes(self.to_bytes()?))
            }
            Payload::Value(value) => {
                Err(PayloadError::TypeMismatch { published: value.type_name(), expected })
            }
            Payload::Bytes(b) => rmp_serde::from_slice::<T>(b)
                .map(Value::Owned)
                .map_err(|e| PayloadError::Decode { expected, reason: e.to_string() }),
        }
    }
}

/// A payload value as a subscriber holds it: the message's own (read in place), or decoded for it.
#[derive(Debug)]
pub(crate) enum Value<T> {
    InMessage,
    Owned(T),
}

impl<T: 'static> Value<T> {
    /// `bytes` as a `Value<T>`, where the caller has checked that `T` is `Bytes`.
    fn bytes(bytes: Bytes) -> Self {
        let mut slot = Some(bytes);
        let any: &mut dyn Any = &mut slot;
        Value::Owned(any.downcast_mut::<Option<T>>().and_then(Option::take).expect("T is Bytes"))
    }

    /// The value, read from `payload` when it is the message's own.
    pub(crate) fn get<'a>(&'a self, payload: &'a Payload) -> &'a T {
        match self {
            Value::Owned(v) => v,
            Value::InMessage => payload.get::<T>().expect("checked when the delivery was made"),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Value(value) => write!(f, "Payload::Value({})", value.type_name()),
            Payload::Bytes(b) => write!(f, "Payload::Bytes({} bytes)", b.len()),
        }
    }
}

/// Why a payload could not be read as the type a subscriber asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A value of another type was published.
    #[error("payload is a {published}, the subscriber expects a {expected}")]
    TypeMismatch {
        /// The published type.
        published: &'static str,
        /// The subscriber's type.
        expected: &'static str,
    },
    /// Bytes did not decode as the subscriber's type.
    #[error("payload bytes do not decode as {expected}: {reason}")]
    Decode {
        /// The subscriber's type.
        expected: &'static str,
        /// The decoder's words.
        reason: String,
    },
    /// The value could not be encoded.
    #[error("payload of type {type_name} does not encode: {reason}")]
    Encode {
        /// The value's type.
        type_name: &'static str,
        /// The encoder's words.
        reason: String,
    },
}

/// Why a message was dead-lettered, as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathReason {
    /// Nacked or rejected without requeue.
    Rejected,
    /// Its time to live ran out.
    Expired,
    /// The queue was full (drop-head, or reject-publish-dlx).
    Maxlen,
    /// Delivered more often than the queue's delivery limit.
    DeliveryLimit,
}

impl fmt::Display for DeathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        })
    }
}

/// One entry of a message's death history (RabbitMQ's `x-death`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    /// The queue it died in.
    pub queue: Arc<str>,
    /// Why.
    pub reason: DeathReason,
    /// How often it died there for this reason.
    pub count: u32,
    /// When it last did, in milliseconds since the broker started.
    pub at_ms: u64,
}

/// The most deaths a message records; older entries are dropped beyond it.
pub const DEATHS_MAX: usize = 16;

/// A message's death history, newest first: empty for almost every message, so one pointer wide
/// (null until a first death) rather than a vector's three words.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deaths(Option<Box<DeathList>>);

#[derive(Debug, Clone)]
struct DeathList(Vec<Death>);

impl Deaths {
    /// No deaths.
    pub(crate) const NONE: Deaths = Deaths(None);

    /// The history, newest first.
    pub(crate) fn as_slice(&self) -> &[Death] {
        self.0.as_deref().map_or(&[], |list| &list.0)
    }
}

impl From<Vec<Death>> for Deaths {
    fn from(deaths: Vec<Death>) -> Self {
        Deaths((!deaths.is_empty()).then(|| Box::new(DeathList(deaths))))
    }
}

/// A published message. Immutable once published and shared (`Arc`) by every queue it reaches.
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) id: MessageId,
    /// Inline up to 24 bytes, so that most keys cost no allocation.
    pub(crate) key: compact_str::CompactString,
    pub(crate) payload: Payload,
    pub(crate) deaths: Deaths,
}

impl Message {
    /// The message id, unique within the broker.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The routing key it was published with.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Its death history, newest first.
    pub fn deaths(&self) -> &[Death] {
        self.deaths.as_slice()
    }

    /// A copy with one more death recorded (the payload stays shared).
    pub(crate) fn died(&self, queue: &Arc<str>, reason: DeathReason, at_ms: u64) -> Message {
        let mut deaths = self.deaths.as_slice().to_vec();
        let count = match deaths.iter().position(|d| &d.queue == queue && d.reason == reason) {
            Some(i) => deaths.remove(i).count + 1,
            None => 1,
        };
        deaths.insert(0, Death { queue: queue.clone(), reason, count, at_ms });
        deaths.truncate(DEATHS_MAX);
        Message { deaths: deaths.into(), ..self.clone() }
    }

    /// Whether dead-lettering into `target` would close a cycle of automatic deaths (no rejection),
    /// which RabbitMQ cuts by dropping the message.
    pub(crate) fn would_cycle(&self, target: &str) -> bool {
        let deaths = self.deaths.as_slice();
        deaths.iter().any(|d| &*d.queue == target) && deaths.iter().all(|d| d.reason != DeathReason::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queued message carries one `Message` (and one queue entry per queue it waits in, see
    /// the queue state's tests); the memory benchmark's per-message figure is made of these.
    #[test]
    fn a_message_stays_small() {
        assert!(size_of::<Message>() <= 72, "Message is {} bytes", size_of::<Message>());
    }
}
