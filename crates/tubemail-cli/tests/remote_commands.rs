//! `tubemail declare`, `tubemail diff` and `tubemail demo --on` against this machine's RabbitMQ
//! (127.0.0.1:5672, its management API at 127.0.0.1:15672, set up by `scripts/services.sh` and
//! `scripts/install-peers.sh`, which CI runs first) and NATS (127.0.0.1:4222, for the demo). A test
//! that needs them fails, saying so, when they do not answer.
//!
//! `diff` compares a whole virtual host, and the default one is shared with every other test run on
//! this machine: each test makes a virtual host of its own, unique to the run, and deletes it (with
//! every queue, exchange and binding in it) when it ends, passed or failed.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

const MANAGEMENT: &str = "http://127.0.0.1:15672";

/// The shop of the examples: queues, an exchange with an alternate exchange, bindings.
const SHOP: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/topologies/shop.toml"));

/// The objects SHOP declares: 4 queues, 2 exchanges, 3 bindings.
const SHOP_OBJECTS: usize = 9;

fn tubemail(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tubemail"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tubemail {args:?}: {e}"))
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(out: &Output) -> Value {
    let (stdout, stderr) = text(out);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Enables RabbitMQ's management API on a machine where it is not yet (a new machine: `cargo test`
/// sets up what it needs, as CI's `scripts/install-peers.sh` does), once per test process.
fn enable_management_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let answers = || agent().get(&format!("{MANAGEMENT}/api/overview")).call().is_ok();
        if answers() {
            return;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/install-peers.sh");
        let status = Command::new("bash").args([script, "--rabbitmq"]).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "scripts/install-peers.sh --rabbitmq could not enable RabbitMQ's management API: {status:?}"
        );
    });
}

/// A virtual host of this test's own, deleted when dropped.
struct Vhost {
    name: String,
}

impl Vhost {
    /// Makes one, failing the test when RabbitMQ or its management API does not answer.
    fn new(test: &str) -> Vhost {
        static N: AtomicU32 = AtomicU32::new(0);
        let addr = "127.0.0.1:5672".parse().expect("an address");
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!("RabbitMQ is not running on 127.0.0.1:5672: start it (scripts/services.sh); this test runs against it in CI");
        }
        enable_management_once();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("tmcli_{test}_{}_{}_{n}", std::process::id(), nanos % 1_000_000_000);
        let vhost = Vhost { name };
        vhost.api("PUT", &format!("/api/vhosts/{}", vhost.name), "{}");
        let all = r#"{"configure":".*","write":".*","read":".*"}"#;
        vhost.api("PUT", &format!("/api/permissions/{}/guest", vhost.name), all);
        vhost
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// A request to the management API; its status must be a success.
    fn api(&self, method: &str, path: &str, body: &str) -> Value {
        let url = format!("{MANAGEMENT}{path}");
        let auth = ("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q="); // guest:guest
        let sent = match method {
            "GET" => agent().get(&url).header(auth.0, auth.1).call(),
            "DELETE" => agent().delete(&url).header(auth.0, auth.1).call(),
            _ => agent().put(&url).header(auth.0, auth.1).content_type("application/json").send(body),
        };
        let mut answer = sent.unwrap_or_else(|e| {
            panic!(
                "RabbitMQ's management API does not answer at {MANAGEMENT} ({e}): enable it with \
                 scripts/install-peers.sh (CI runs it); this test runs against it"
            )
        });
        let status = answer.status().as_u16();
        let text = answer.body_mut().read_to_string().unwrap_or_default();
        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The names of what the virtual host has of `what` (`queues`, `exchanges`), RabbitMQ's own left out.
    fn names(&self, what: &str) -> Vec<String> {
        let listed = self.api("GET", &format!("/api/{what}/{}?columns=name", self.name), "");
        let names = listed.as_array().unwrap_or_else(|| panic!("a list of {what}: {listed}"));
        names
            .iter()
            .filter_map(|o| o["name"].as_str())
            .filter(|n| !n.is_empty() && !n.starts_with("amq."))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let url = format!("{MANAGEMENT}/api/vhosts/{}", self.name);
        let _ = agent().delete(&url).header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=").call();
    }
}

/// A topology file, removed when dropped.
struct TempFile(tempfile::NamedTempFile);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().expect("a temporary file");
        std::fs::write(file.path(), text).expect("temp dir is writable");
        TempFile(file)
    }

    fn arg(&self) -> &str {
        self.0.path().to_str().expect("temp path is UTF-8")
    }
}

fn declare(file: &TempFile, url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["declare", "--topology", file.arg(), "--on", url, "--json"];
    args.extend_from_slice(extra);
    tubemail(&args, &[])
}

/// Declares `file`, which must succeed, and gives the plan.
fn declared(file: &TempFile, url: &str) -> Value {
    let out = declare(file, url, &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    json(&out)
}

fn diff(file: &TempFile, url: &str) -> Output {
    tubemail(&["diff", "--topology", file.arg(), "--on", url, "--json"], &[])
}

/// The actions of a plan, one per object.
fn actions(plan: &Value) -> Vec<String> {
    let steps = plan["steps"].as_array().unwrap_or_else(|| panic!("a plan has steps: {plan}"));
    steps.iter().map(|s| s["action"].as_str().unwrap_or_default().to_owned()).collect()
}

#[test]
fn declare_twice_creates_everything_then_nothing() {
    let vhost = Vhost::new("twice");
    let file = TempFile::new(SHOP);
    assert_eq!(actions(&declared(&file, &vhost.url())), vec!["created"; SHOP_OBJECTS]);
    let second = declared(&file, &vhost.url());
    assert_eq!(actions(&second), vec!["exists"; SHOP_OBJECTS], "the second declare creates nothing");
    let mut queues = vhost.names("queues");
    queues.sort();
    assert_eq!(queues, ["audit", "billing", "billing-dead", "unrouted"]);
    assert_eq!(vhost.names("exchanges").len(), 2, "events and its alternate exchange");
}

#[test]
fn a_dry_run_creates_nothing() {
    let vhost = Vhost::new("dry");
    let file = TempFile::new(SHOP);
    let out = declare(&file, &vhost.url(), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let plan = json(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(actions(&plan), vec!["would-create"; SHOP_OBJECTS]);
    assert!(vhost.names("queues").is_empty(), "a dry run declared queues");
    assert!(vhost.names("exchanges").is_empty(), "a dry run declared exchanges");
    let table = tubemail(&["declare", "--topology", file.arg(), "--on", &vhost.url(), "--dry-run"], &[]);
    let (stdout, _) = text(&table);
    assert!(stdout.contains("would create  queue billing"), "{stdout}");
    assert!(stdout.contains("9 to create, 0 existed"), "{stdout}");
}

#[test]
fn diff_after_declare_shows_no_drift() {
    let vhost = Vhost::new("clean");
    let file = TempFile::new(SHOP);
    declared(&file, &vhost.url());
    let out = diff(&file, &vhost.url());
    let drift = json(&out);
    assert_eq!(out.status.code(), Some(0), "no drift exits 0: {drift}");
    for direction in ["missing", "differs", "extra", "unchecked"] {
        assert_eq!(drift[direction], Value::Array(Vec::new()), "{direction}: {drift}");
    }
    let table = tubemail(&["diff", "--topology", file.arg(), "--on", &vhost.url()], &[]);
    assert!(text(&table).0.ends_with("no drift\n"), "{:?}", text(&table));
}

#[test]
fn diff_shows_a_queue_whose_argument_changed_in_the_file_and_declare_refuses_it() {
    let vhost = Vhost::new("changed");
    declared(&TempFile::new(SHOP), &vhost.url());
    let changed = TempFile::new(&SHOP.replace("depth_max = 10000", "depth_max = 500"));
    let out = diff(&changed, &vhost.url());
    let drift = json(&out);
    assert_eq!(out.status.code(), Some(1), "drift exits 1: {drift}");
    // A quorum queue refuses past `x-max-length`, so tubemail declares depth_max - 1.
    let expected = serde_json::json!([{
        "object": { "kind": "queue", "name": "billing" },
        "field": "x-max-length",
        "file": "499",
        "broker": "9999",
    }]);
    assert_eq!(drift["differs"], expected, "{drift}");
    assert_eq!(drift["missing"], Value::Array(Vec::new()), "{drift}");
    assert_eq!(drift["extra"], Value::Array(Vec::new()), "{drift}");
    // Declaring the changed file would be refused by RabbitMQ: nothing is declared, the queue named.
    let refused = declare(&changed, &vhost.url(), &[]);
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("queue billing") && stderr.contains("x-max-length"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn diff_shows_an_extra_queue_and_exchange_on_the_broker() {
    let vhost = Vhost::new("extra");
    let file = TempFile::new(SHOP);
    declared(&file, &vhost.url());
    let stray = TempFile::new("[topics.stray-topic]\n[queues.stray]\n[[bindings]]\ntopic = \"stray-topic\"\nqueue = \"stray\"\nkey = \"a.#\"\n");
    declared(&stray, &vhost.url());
    let out = diff(&file, &vhost.url());
    let drift = json(&out);
    assert_eq!(out.status.code(), Some(1), "drift exits 1: {drift}");
    let expected = serde_json::json!([
        { "kind": "queue", "name": "stray" },
        { "kind": "exchange", "name": "stray-topic" },
        { "kind": "binding", "exchange": "stray-topic", "queue": "stray", "key": "a.#" },
    ]);
    assert_eq!(drift["extra"], expected, "{drift}");
    assert_eq!(drift["missing"], Value::Array(Vec::new()), "{drift}");
    // And the other way round: the stray file misses nothing of its own, and SHOP's objects are extra.
    let drift = json(&diff(&stray, &vhost.url()));
    assert_eq!(drift["extra"].as_array().map(Vec::len), Some(SHOP_OBJECTS), "{drift}");
}

#[test]
fn the_files_connect_line_is_used_without_on() {
    let vhost = Vhost::new("connect");
    let file = TempFile::new(&format!("connect = \"{}\"\n{SHOP}", vhost.url()));
    let out = tubemail(&["declare", "--topology", file.arg()], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = tubemail(&["diff", "--topology", file.arg()], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(vhost.names("queues").len(), 4);
}

#[test]
fn without_the_management_api_diff_says_what_it_could_not_check_and_exits_2() {
    let vhost = Vhost::new("noapi");
    let file = TempFile::new(SHOP);
    let nowhere = [("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:1")];
    let out = tubemail(&["declare", "--topology", file.arg(), "--on", &vhost.url()], &nowhere);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "declare works over AMQP alone: {stdout}{stderr}");
    assert!(stdout.contains("created       queue billing"), "{stdout}");
    assert!(stdout.contains("declared      binding events -> queue billing"), "{stdout}");
    let out = tubemail(&["diff", "--topology", file.arg(), "--on", &vhost.url()], &nowhere);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("no drift in what could be checked"), "{stdout}");
    assert!(stdout.contains("not checked: what the broker has beyond the file"), "{stdout}");
    assert!(stdout.contains("rabbitmq-plugins enable rabbitmq_management"), "{stdout}");
    // What it can check, it does: a missing queue is drift.
    let more = TempFile::new(&format!("{SHOP}\n[queues.later]\n"));
    let out = tubemail(&["diff", "--topology", more.arg(), "--on", &vhost.url()], &nowhere);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("in the file, missing on the broker:\n  queue later"), "{stdout}");
}

#[test]
fn demo_on_rabbitmq_runs_its_broker_there_and_deletes_it() {
    let vhost = Vhost::new("demo");
    let out = tubemail(&["demo", "--on", &vhost.url(), "--orders", "300"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let at = format!("topics, queues and bindings: on rabbitmq at 127.0.0.1:5672/{}", vhost.name);
    assert!(stdout.contains(&at), "{stdout}");
    assert!(stdout.contains("publishers and handlers: in this process"), "{stdout}");
    assert!(
        stdout.contains("dead letters in tubemail_demo_support-dead by reason: {\"delivery_limit\": "),
        "{stdout}"
    );
    assert!(stdout.contains("routed, refused or unroutable: true"), "{stdout}");
    assert!(vhost.names("queues").is_empty(), "the demo left queues: {:?}", vhost.names("queues"));
    assert!(vhost.names("exchanges").is_empty(), "the demo left exchanges: {:?}", vhost.names("exchanges"));
}

#[test]
fn demo_on_nats_runs_its_broker_there() {
    let addr = "127.0.0.1:4222".parse().expect("an address");
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("NATS is not running on 127.0.0.1:4222: start it (scripts/services.sh); this test runs against it in CI");
    }
    let out = tubemail(&["demo", "--on", "nats://127.0.0.1:4222", "--orders", "300"], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("topics, queues and bindings: on nats at nats://127.0.0.1:4222"), "{stdout}");
    assert!(stdout.contains("deleted from nats: the 6 queues named tubemail_demo_*"), "{stdout}");
    assert!(stdout.contains("routed, refused or unroutable: true"), "{stdout}");
}

/// Bad input gets a clear error and exit 2, never a panic; none of it needs RabbitMQ.
#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let good = TempFile::new(SHOP);
    let broken = TempFile::new("[queues.billing\n");
    let unknown_field = TempFile::new("[queues.billing]\ndepth = 3\n");
    let cases: [(&[&str], &str); 6] = [
        (&["diff", "--topology", broken.arg(), "--on", "amqp://127.0.0.1"], ":1:"),
        (&["declare", "--topology", unknown_field.arg(), "--on", "amqp://127.0.0.1"], "depth"),
        (
            &["declare", "--topology", "/nonexistent/shop.toml", "--on", "amqp://127.0.0.1"],
            "/nonexistent/shop.toml",
        ),
        (&["declare", "--topology", good.arg(), "--on", "http://127.0.0.1:5672"], "names no backend"),
        (
            &["diff", "--topology", good.arg(), "--on", "amqp://guest:secret@127.0.0.1:1/%2f"],
            "cannot connect",
        ),
        (&["diff", "--topology", good.arg()], "--on URL"),
    ];
    for (args, words) in cases {
        let out = tubemail(args, &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(words), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("secret"), "the password is never printed: {stderr}");
    }
    let out = tubemail(&["demo", "--on", "amqp://guest:guest@127.0.0.1:1/%2f"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect") && !stderr.contains("panicked"), "{stderr}");
    let out = tubemail(&["diff", "--help"], &[]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("Exit 0 when there is no drift, 1 when there is, 2 on an error"), "{stdout}");
}

#[test]
fn check_on_a_remote_broker_says_why_it_cannot_and_where_to_look() {
    let out = tubemail(&["check", "--on", "amqp://guest:secret@127.0.0.1:5672/%2f"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("conformance") && stderr.contains("inside this process"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// On NATS a topology's queues are streams: declare creates them once, diff finds none missing,
/// then the stream whose age the file changed.
#[test]
fn declare_and_diff_on_nats() {
    let addr = "127.0.0.1:4222".parse().expect("an address");
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("NATS is not running on 127.0.0.1:4222: start it (scripts/services.sh); this test runs against it in CI");
    }
    let p = format!("tmcli_nats_{}", std::process::id());
    let toml = format!("[queues.{p}_a]\nmessage_ttl_ms = 60000\n[queues.{p}_b]\ndepth_max = 5\noverflow = \"reject-publish\"\n");
    let file = TempFile::new(&toml);
    let url = "nats://127.0.0.1:4222";
    let first = declared(&file, url);
    assert_eq!(actions(&first), ["created", "created"], "{first}");
    let again = declared(&file, url);
    assert_eq!(actions(&again), ["exists", "exists"], "{again}");
    let same = json(&diff(&file, url));
    assert!(
        same["missing"].as_array().unwrap().is_empty() && same["differs"].as_array().unwrap().is_empty(),
        "{same}"
    );
    let changed = TempFile::new(&toml.replace("60000", "30000"));
    let out = diff(&changed, url);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let drift = json(&out);
    let differs = drift["differs"].as_array().unwrap();
    assert_eq!(differs.len(), 1, "{drift}");
    assert_eq!(differs[0]["field"], "max_age_ms", "{drift}");
    assert_eq!((differs[0]["file"].as_str(), differs[0]["broker"].as_str()), (Some("30000"), Some("60000")));
    let topology = tubemail::Topology::from_toml_str(&toml).expect("a valid topology");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(tubemail::remote::admin::delete(url, &topology)).expect("deleted");
}
