//! RabbitMQ's management HTTP API, for what AMQP cannot do: list a virtual host's queues, exchanges
//! and bindings.
//!
//! The client is `ureq` without its default features, called under `spawn_blocking`: a handful of
//! small crates (no TLS, no compression, no async stack of its own), where `reqwest` would bring
//! hyper, tower and an HTTP/2 stack for three GETs to a local service. The API is plain HTTP here;
//! an `https://` management URL is refused with a message that says so.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::Value;

use super::compare::{quoted, Fields, Inventory};
use super::Object;
use crate::remote::redact;

/// The management API's port, unless `RABBITMQ_MANAGEMENT_URL` says otherwise.
pub(crate) const MANAGEMENT_PORT: u16 = 15672;
/// The environment variable naming the management API: `http://user:password@host:port`.
pub(crate) const MANAGEMENT_URL_VAR: &str = "RABBITMQ_MANAGEMENT_URL";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read: a listing of a virtual host with some hundred thousand objects.
const ANSWER_BYTES_MAX: u64 = 64 << 20;

/// Why the management API could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagementError {
    #[error(
        "RabbitMQ's management API does not answer at {base} ({reason}): enable it with \
         `rabbitmq-plugins enable rabbitmq_management`, or set {MANAGEMENT_URL_VAR} to where it answers"
    )]
    Unreachable { base: String, reason: String },
    #[error(
        "RabbitMQ's management API at {base} refused user {user:?} (HTTP {status}): give the user the \
         `management` tag (`rabbitmqctl set_user_tags {user} management`) or set {MANAGEMENT_URL_VAR} \
         with one that has it"
    )]
    Login { base: String, user: String, status: u16 },
    #[error("RabbitMQ's management API at {base} answered {path} with HTTP {status}: {body}")]
    Status { base: String, path: String, status: u16, body: String },
    #[error("RabbitMQ's management API at {base}: {reason}")]
    Invalid { base: String, reason: String },
}

/// Where the management API of one virtual host is, and who asks.
#[derive(Debug, Clone)]
pub(crate) struct Management {
    /// `http://host:port`, without credentials.
    base: String,
    user: String,
    password: String,
    /// The virtual host, percent-encoded for a path.
    vhost: String,
}

impl Management {
    /// The management API of the broker and virtual host an `amqp://` URL names: port 15672 of its
    /// host with its credentials, unless `RABBITMQ_MANAGEMENT_URL` names another (its credentials,
    /// where it has them, win).
    pub(crate) fn for_amqp(amqp: &str) -> Result<Management, ManagementError> {
        let invalid = |reason: String| ManagementError::Invalid { base: redact(amqp), reason };
        let url = url::Url::parse(amqp).map_err(|e| invalid(format!("the URL does not parse: {e}")))?;
        let host = url.host_str().unwrap_or("localhost");
        // As lapin reads it: no path is the default virtual host `/`.
        let vhost = decode(url.path().get(1..).unwrap_or("/"));
        let mut management = Management {
            base: format!("http://{host}:{MANAGEMENT_PORT}"),
            user: credential(url.username(), "guest"),
            password: credential(url.password().unwrap_or(""), "guest"),
            vhost: utf8_percent_encode(&vhost, NON_ALPHANUMERIC).to_string(),
        };
        if let Ok(other) = std::env::var(MANAGEMENT_URL_VAR) {
            management.point_at(&other).map_err(invalid)?;
        }
        Ok(management)
    }

    /// Points at the management API `url` names (`RABBITMQ_MANAGEMENT_URL`).
    fn point_at(&mut self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{MANAGEMENT_URL_VAR}={url:?}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "{MANAGEMENT_URL_VAR}={url:?}: only http:// management URLs are read by this build"
            ));
        }
        let host = parsed.host_str().ok_or_else(|| format!("{MANAGEMENT_URL_VAR}={url:?} names no host"))?;
        let port = parsed.port().unwrap_or(80);
        self.base = format!("http://{host}:{port}{}", parsed.path().trim_end_matches('/'));
        if !parsed.username().is_empty() {
            self.user = decode(parsed.username());
            self.password = decode(parsed.password().unwrap_or(""));
        }
        Ok(())
    }

    /// Everything the virtual host has but RabbitMQ's own objects and exclusive queues.
    pub(crate) async fn inventory(&self) -> Result<Inventory, ManagementError> {
        let queues: Vec<QueueInfo> =
            self.list("queues", "name,type,durable,auto_delete,exclusive,arguments").await?;
        let exchanges: Vec<ExchangeInfo> =
            self.list("exchanges", "name,type,durable,auto_delete,arguments").await?;
        let bindings: Vec<BindingInfo> =
            self.list("bindings", "source,destination,destination_type,routing_key").await?;
        let mut inventory = Inventory::new();
        for q in queues.into_iter().filter(|q| !q.exclusive) {
            inventory.insert(Object::queue(q.name.clone()), q.fields());
        }
        for e in exchanges.into_iter().filter(|e| !e.name.is_empty() && !e.name.starts_with("amq.")) {
            let mut fields = arguments(e.arguments);
            fields.insert("type".to_owned(), quoted(&e.kind));
            fields.insert("durable".to_owned(), e.durable.to_string());
            fields.insert("auto_delete".to_owned(), e.auto_delete.to_string());
            inventory.insert(Object::exchange(e.name), fields);
        }
        // The default exchange's bindings are implicit, one per queue.
        for b in bindings.into_iter().filter(|b| !b.source.is_empty()) {
            let (exchange, destination, key) = (b.source, b.destination, b.routing_key);
            let object = match b.destination_type.as_str() {
                "exchange" => Object::ExchangeBinding { exchange, destination, key },
                _ => Object::Binding { exchange, queue: destination, key },
            };
            inventory.insert(object, Fields::new());
        }
        Ok(inventory)
    }

    /// GETs `/api/{what}/{vhost}` with only `columns`, and reads it as a list.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        columns: &str,
    ) -> Result<Vec<T>, ManagementError> {
        let path = format!("/api/{what}/{}?disable_stats=true&columns={columns}", self.vhost);
        let this = self.clone();
        let (status, body) = tokio::task::spawn_blocking(move || this.get(&path))
            .await
            .map_err(|e| self.invalid(format!("the request's thread failed: {e}")))??;
        match status {
            200 => serde_json::from_str(&body)
                .map_err(|e| self.invalid(format!("/api/{what} is not the listing expected: {e}"))),
            401 | 403 => {
                Err(ManagementError::Login { base: self.base.clone(), user: self.user.clone(), status })
            }
            _ => Err(ManagementError::Status {
                base: self.base.clone(),
                path: format!("/api/{what}/{}", self.vhost),
                status,
                body: body.chars().take(200).collect(),
            }),
        }
    }

    /// One blocking GET: the status and the body.
    fn get(&self, path: &str) -> Result<(u16, String), ManagementError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        let unreachable =
            |e: ureq::Error| ManagementError::Unreachable { base: self.base.clone(), reason: e.to_string() };
        let mut answer = agent
            .get(format!("{}{path}", self.base))
            .header("authorization", basic_auth(&self.user, &self.password))
            .call()
            .map_err(unreachable)?;
        let status = answer.status().as_u16();
        let body = answer.body_mut().with_config().limit(ANSWER_BYTES_MAX).read_to_string();
        Ok((status, body.map_err(|e| self.invalid(format!("reading the answer: {e}")))?))
    }

    fn invalid(&self, reason: String) -> ManagementError {
        ManagementError::Invalid { base: self.base.clone(), reason }
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn credential(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        decode(s)
    }
}

/// An HTTP `Authorization: Basic …` value.
fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// Arguments as fields: strings quoted, numbers and booleans as they are.
fn arguments(arguments: BTreeMap<String, Value>) -> Fields {
    arguments
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => quoted(&s),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect()
}

#[derive(Deserialize)]
struct QueueInfo {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    durable: bool,
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

impl QueueInfo {
    /// `type` is the queue's type (the `x-queue-type` it was declared with, or classic).
    fn fields(mut self) -> Fields {
        let declared = self.arguments.remove("x-queue-type");
        let kind = match (self.kind.take(), declared) {
            (Some(kind), _) => kind,
            (None, Some(Value::String(kind))) => kind,
            _ => "classic".to_owned(),
        };
        let mut fields = arguments(self.arguments);
        fields.insert("type".to_owned(), quoted(&kind));
        fields.insert("durable".to_owned(), self.durable.to_string());
        fields.insert("auto_delete".to_owned(), self.auto_delete.to_string());
        fields
    }
}

#[derive(Deserialize)]
struct ExchangeInfo {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    #[serde(default)]
    arguments: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct BindingInfo {
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64_of_user_and_password() {
        assert_eq!(basic_auth("guest", "guest"), "Basic Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "cd"), "Basic YWI6Y2Q=");
        assert_eq!(basic_auth("abc", "def"), "Basic YWJjOmRlZg==");
    }

    #[test]
    fn the_api_is_found_from_the_amqp_url() {
        let m = Management::for_amqp("amqp://user%40x:p%2Fw@10.0.0.7:5672/%2f").unwrap();
        assert_eq!(
            (m.base.as_str(), m.user.as_str(), m.password.as_str()),
            ("http://10.0.0.7:15672", "user@x", "p/w")
        );
        assert_eq!(m.vhost, "%2F");
        let m = Management::for_amqp("amqp://127.0.0.1").unwrap();
        assert_eq!((m.user.as_str(), m.vhost.as_str()), ("guest", "%2F"));
        let m = Management::for_amqp("amqp://127.0.0.1/billing").unwrap();
        assert_eq!(m.vhost, "billing");
        let mut m = m;
        m.point_at("http://admin:secret@mgmt:8080/rabbit/").unwrap();
        assert_eq!((m.base.as_str(), m.user.as_str()), ("http://mgmt:8080/rabbit", "admin"));
        assert!(m.point_at("https://mgmt").unwrap_err().contains("only http://"));
    }

    #[test]
    fn a_queue_without_a_declared_type_is_classic() {
        let q: QueueInfo = serde_json::from_str(
            r#"{"name":"q","durable":true,"auto_delete":false,"arguments":{"x-max-length":5}}"#,
        )
        .unwrap();
        let fields = q.fields();
        assert_eq!(fields["type"], "\"classic\"");
        assert_eq!(fields["x-max-length"], "5");
    }
}
