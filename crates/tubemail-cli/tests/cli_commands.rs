//! The `tubemail` binary: `route` prints the queues each key reaches, `validate` accepts good topology
//! files and names the file, line and field of the first problem in bad ones, `demo` runs to the
//! end with a final table, and `bench` reports in the JSON shape and the plots issue #4 names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/topologies/shop.toml");

/// Runs the binary with `args`.
fn tubemail(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tubemail"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tubemail {args:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// A topology file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a file whose name is unique to this process and call.
    fn new(label: &str, text: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tubemail-cli-{}-{n}-{label}.toml", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).expect("temp dir is writable");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Like shop.toml but without the catch-all `#` binding, so that some keys reach no queue.
const NO_CATCH_ALL: &str = r#"
[topics.events]
kind = "topic"

[queues.billing]
[queues.audit]
[queues.shipping]

[[bindings]]
topic = "events"
queue = "shipping"
key = "orders.*.paid"

[[bindings]]
topic = "events"
queue = "billing"
key = "orders.*.paid"

[[bindings]]
topic = "events"
queue = "audit"
key = "orders.#"
"#;

#[test]
fn route_prints_each_key_with_its_sorted_queues() {
    let out = tubemail(&["route", "--topology", SHOP, "orders.42.paid", "orders.x", ""]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "orders.42.paid\taudit,billing\norders.x\taudit\n\taudit\n");
}

#[test]
fn route_prints_nothing_after_the_tab_for_an_unroutable_key() {
    let file = TempFile::new("no-catch-all", NO_CATCH_ALL);
    let out = tubemail(&["route", "--topology", file.arg(), "orders.7.paid", "orders.7", "returns.7", ""]);
    assert!(out.status.success(), "{out:?}");
    let expected = "orders.7.paid\taudit,billing,shipping\norders.7\taudit\nreturns.7\t\n\t\n";
    assert_eq!(stdout(&out), expected);
}

#[test]
fn route_json_maps_each_key_to_a_sorted_list() {
    let file = TempFile::new("json", NO_CATCH_ALL);
    let out =
        tubemail(&["route", "--json", "--topology", file.arg(), "orders.7.paid", "returns.7", "orders.7"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one object on one line: {text:?}");
    let routes: serde_json::Value = serde_json::from_str(&text).expect("stdout is JSON");
    let expected = serde_json::json!({
        "orders.7.paid": ["audit", "billing", "shipping"],
        "orders.7": ["audit"],
        "returns.7": [],
    });
    assert_eq!(routes, expected);
}

#[test]
fn route_on_the_shop_file_as_json() {
    let out = tubemail(&["route", "--topology", SHOP, "--json", "orders.42.paid", "orders.x", ""]);
    assert!(out.status.success(), "{out:?}");
    let routes: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("stdout is JSON");
    let expected = serde_json::json!({
        "orders.42.paid": ["audit", "billing"],
        "orders.x": ["audit"],
        "": ["audit"],
    });
    assert_eq!(routes, expected);
}

#[test]
fn route_shows_the_alternate_queue_of_an_unroutable_key() {
    let file = std::env::temp_dir().join(format!("tubemail-route-alt-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[topics.t]\nkind = \"direct\"\nalternate = \"unrouted\"\n[queues.q]\n[queues.unrouted]\n\
         [[bindings]]\ntopic = \"t\"\nqueue = \"q\"\nkey = \"a\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = tubemail(&["route", "--topology", path, "a", "b"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "a\tq\nb\tunrouted (alternate)\n");
    let out = tubemail(&["route", "--topology", path, "--json", "b"]);
    let routes: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("stdout is JSON");
    assert_eq!(routes, serde_json::json!({ "b": { "alternate": "unrouted" } }));
    std::fs::remove_file(file).unwrap();
}

#[test]
fn route_without_topic_on_a_file_with_two_topics_fails_naming_them() {
    let text = "[topics.alpha]\n[topics.beta]\n[queues.q]\n\
                [[bindings]]\ntopic = \"alpha\"\nqueue = \"q\"\nkey = \"#\"\n";
    let file = TempFile::new("two-topics", text);
    let out = tubemail(&["route", "--topology", file.arg(), "k"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout(&out), "", "nothing routed");
    let err = stderr(&out);
    assert!(err.contains("--topic"), "{err}");
    assert!(err.contains("alpha") && err.contains("beta"), "the topics are named: {err}");

    let chosen = tubemail(&["route", "--topology", file.arg(), "--topic", "alpha", "k"]);
    assert!(chosen.status.success(), "{chosen:?}");
    assert_eq!(stdout(&chosen), "k\tq\n");
}

#[test]
fn validate_accepts_a_good_file() {
    let out = tubemail(&["validate", "--topology", SHOP]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("shop.toml") && text.contains("ok"), "{text}");
    assert_eq!(stderr(&out), "");
}

/// Runs `validate` on `text` and checks that it fails with exit 1 and one error naming the file, the
/// line and every one of `words` (the field, the offending value).
#[track_caller]
fn assert_invalid(label: &str, text: &str, line: usize, words: &[&str]) {
    let file = TempFile::new(label, text);
    let out = tubemail(&["validate", "--topology", file.arg()]);
    assert_eq!(out.status.code(), Some(1), "{label}: {out:?}");
    assert_eq!(stdout(&out), "", "{label}: nothing on stdout");
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    let at = format!("{}:{line}:", file.path().display());
    assert!(first.contains(&at), "{label}: file and line {at:?} not in {err:?}");
    for word in words {
        assert!(first.contains(word), "{label}: {word:?} not in {err:?}");
    }
}

#[test]
fn validate_rejects_a_toml_syntax_error() {
    assert_invalid("syntax", "[queues.billing]\ndepth_max = 5\n[queues.other\n", 3, &["queues.other"]);
}

#[test]
fn validate_rejects_an_unknown_field() {
    let text = "[queues.billing]\ndepth_max = 5\ndepth_maxx = 5\n";
    assert_invalid("unknown-field", text, 3, &["queues.billing.depth_maxx", "unknown field"]);
}

#[test]
fn validate_rejects_an_unknown_kind() {
    let text = "[topics.events]\nkind = \"topical\"\n";
    assert_invalid("unknown-kind", text, 2, &["topics.events.kind", "topical"]);
}

#[test]
fn validate_rejects_an_unknown_overflow_policy() {
    let text = "[queues.billing]\noverflow = \"drop-tail\"\n";
    assert_invalid("unknown-overflow", text, 2, &["queues.billing.overflow", "drop-tail"]);
}

#[test]
fn validate_rejects_a_binding_to_an_unknown_topic() {
    let text = "[topics.events]\n[queues.billing]\n\n[[bindings]]\ntopic = \"evnts\"\nqueue = \"billing\"\n";
    assert_invalid("unknown-topic", text, 5, &["bindings[0].topic", "evnts"]);
}

#[test]
fn validate_rejects_a_binding_to_an_unknown_queue() {
    let text = "[topics.events]\n[queues.billing]\n\n[[bindings]]\ntopic = \"events\"\nqueue = \"biling\"\n";
    assert_invalid("unknown-queue", text, 6, &["bindings[0].queue", "biling"]);
}

#[test]
fn validate_rejects_depth_max_zero() {
    let text = "[queues.billing]\ndelivery = \"at-least-once\"\ndepth_max = 0\n";
    assert_invalid("depth-max-zero", text, 3, &["queues.billing.depth_max"]);
}

#[test]
fn validate_rejects_a_pattern_over_255_bytes() {
    let pattern = "a".repeat(256);
    let text = format!(
        "[topics.events]\n[queues.billing]\n\n[[bindings]]\ntopic = \"events\"\nqueue = \"billing\"\n\
         key = \"{pattern}\"\n"
    );
    assert_invalid("long-pattern", &text, 7, &["bindings[0].key", "255"]);
}

#[test]
fn a_pattern_of_exactly_255_bytes_is_valid() {
    let pattern = "a".repeat(255);
    let text = format!("[topics.events]\n[queues.billing]\n[[bindings]]\ntopic = \"events\"\nqueue = \"billing\"\nkey = \"{pattern}\"\n");
    let file = TempFile::new("pattern-255", &text);
    let out = tubemail(&["validate", "--topology", file.arg()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn validate_of_a_missing_file_fails_naming_it() {
    let missing = std::env::temp_dir().join(format!("tubemail-cli-{}-missing.toml", std::process::id()));
    let out = tubemail(&["validate", "--topology", missing.to_str().expect("UTF-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains(&missing.display().to_string()), "{out:?}");
}

#[test]
fn demo_runs_to_the_end_and_prints_a_final_table_with_dead_letters() {
    let out = tubemail(&["demo"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let (_, last) = text.rsplit_once("-- final\n").unwrap_or_else(|| panic!("no final table in {text}"));
    let header = last.lines().next().unwrap_or_default();
    for column in ["queue", "enqueued", "delivered", "acked", "dead", "dropped"] {
        assert!(header.split_whitespace().any(|c| c == column), "no {column:?} column in {header:?}");
    }
    let dead_line = last
        .lines()
        .find(|l| l.starts_with("dead letters in support-dead by reason:"))
        .unwrap_or_else(|| panic!("no dead-letter count line after the final table: {last}"));
    assert!(dead_line.contains("\"delivery_limit\": "), "{dead_line}");
    assert!(last.contains("conservation holds: true"), "{last}");
    let dead_column = header.split_whitespace().position(|c| c == "dead").expect("checked above");
    let dead_in_table: u64 = last
        .lines()
        .filter(|l| l.starts_with("support-tickets"))
        .map(|l| l.split_whitespace().nth(dead_column).and_then(|n| n.parse::<u64>().ok()).expect("a count"))
        .sum();
    assert!(dead_in_table > 0, "the poisoned tickets were dead-lettered: {last}");
}

/// `bench --json` gives one object with `scenario` and `results`, each result with the fields issue #4
/// names, and tubemail's ratio to the baseline measured in the same run.
#[test]
fn bench_json_has_the_named_fields_and_tubemails_ratio() {
    let out = tubemail(&["bench", "fanout", "--messages", "400", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(json["scenario"], "fanout");
    let results = json["results"].as_array().expect("results");
    let systems: Vec<(&str, Option<&str>)> =
        results.iter().map(|r| (r["system"].as_str().unwrap(), r["mode"].as_str())).collect();
    assert_eq!(
        systems,
        [("baseline", None), ("tubemail", Some("at-most-once")), ("tubemail", Some("at-least-once"))]
    );
    for r in results {
        for field in ["deliveries_per_sec", "p50_us", "p99_us", "lost"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["lost"], 0, "{r}");
        assert!(r["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
    let base = results[0]["deliveries_per_sec"].as_f64().unwrap();
    for r in &results[1..] {
        let ratio = r["ratio_to_baseline"].as_f64().expect("tubemail has ratio_to_baseline");
        let rate = r["deliveries_per_sec"].as_f64().unwrap();
        assert!((ratio - rate / base).abs() < 1e-9 * ratio.max(1.0), "{r}");
    }
}

/// `--plot` writes an SVG with a curve per system; a scenario without a curve is refused by name.
#[test]
fn bench_plot_draws_latency_and_refuses_fanout() {
    let svg = std::env::temp_dir().join(format!("tubemail-cli-{}-latency.svg", std::process::id()));
    let path = svg.to_str().expect("temp path is UTF-8");
    let out = tubemail(&["bench", "latency", "--messages", "300", "--plot", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).expect("the plot was written");
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg"), "an SVG document");
    for system in ["baseline", "tubemail at-most-once", "tubemail at-least-once"] {
        assert!(text.contains(system), "the legend names {system}");
    }

    let out = tubemail(&["bench", "fanout", "--messages", "100", "--plot", path]);
    assert!(!out.status.success(), "fanout has no curve to draw");
    assert!(
        stderr(&out).contains("--plot draws wide, bindings, latency and log, not fanout"),
        "{}",
        stderr(&out)
    );
}

/// `bench log --json` (a small run) gives the issue's fields on every row, rows for tubemail in memory
/// and under each fsync policy (always at 1, 16 and 256 in flight) and for the baseline, a reader that
/// lost nothing, the reopen's figures, and nothing lost anywhere; `--plot` draws a series per policy.
/// No timing is asserted: speed targets live in BENCHMARKS.md.
#[test]
fn bench_log_json_covers_every_policy_and_loses_nothing() {
    let svg = std::env::temp_dir().join(format!("tubemail-cli-{}-log.svg", std::process::id()));
    let path = svg.to_str().expect("temp path is UTF-8");
    let out = tubemail(&["bench", "log", "--messages", "20000", "--json", "--plot", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(json["scenario"], "log");
    let results = json["results"].as_array().expect("results");
    for r in results {
        for field in ["system", "fsync", "in_flight", "records_per_sec", "bytes_per_sec", "lost"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["lost"], 0, "{r}");
    }
    let has = |system: &str, fsync: &str, op: &str, in_flight: u64| {
        results.iter().any(|r| {
            r["system"] == system && r["fsync"] == fsync && r["op"] == op && r["in_flight"] == in_flight
        })
    };
    for (fsync, in_flight) in
        [("memory", 1), ("never", 1), ("interval", 1), ("always", 1), ("always", 16), ("always", 256)]
    {
        assert!(
            has("tubemail", fsync, "append", in_flight),
            "no tubemail {fsync} row at {in_flight} in flight"
        );
    }
    for fsync in ["never", "interval", "always"] {
        assert!(has("baseline", fsync, "append", 1), "no baseline {fsync} row");
    }
    for r in results.iter().filter(|r| r["op"] == "append") {
        assert!(r["records"].as_u64().unwrap() > 0, "{r}");
        assert!(r["records_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        if r["system"] == "tubemail" && r["fsync"] != "memory" {
            assert!(r["ratio_to_baseline"].as_f64().is_some(), "a tubemail row on disk has its ratio: {r}");
        }
    }
    let reader = results.iter().find(|r| r["op"] == "consume").expect("a consume row");
    assert_eq!(reader["records"], 20000, "{reader}");
    assert!(reader["kept_up"].is_boolean(), "{reader}");
    let reopen = results.iter().find(|r| r["op"] == "reopen").expect("a reopen row");
    assert_eq!(reopen["reopened_records"], 20000, "{reopen}");
    for field in ["reopen_secs", "reopened_bytes", "index_bytes", "index_ratio"] {
        assert!(reopen[field].as_f64().is_some(), "{field} missing in {reopen}");
    }
    assert!(reopen["index_ratio"].as_f64().unwrap() <= 0.01, "{reopen}");
    let text = std::fs::read_to_string(&svg).expect("the plot was written");
    let _ = std::fs::remove_file(&svg);
    for series in ["tubemail always", "tubemail never", "tubemail memory", "baseline always"] {
        assert!(text.contains(series), "the legend names {series}");
    }
}

/// Every command given a zero, a negative, a huge or a vacuous value refuses it clearly (exit 1 or
/// clap's 2, a message on stderr), and none panics (exit 101).
#[test]
fn bad_arguments_are_refused_and_never_panic() {
    let cases: &[&[&str]] = &[
        &["check", "--mode", "at-least-once", "--seeds", "0"],
        &["check", "--mode", "at-least-once", "--messages", "0"],
        &["check", "--mode", "at-least-once", "--faults", ""],
        &["check", "--mode", "at-least-once", "--seeds", "-3"],
        &["check", "--mode", "at-least-once", "--seeds", "99999999999999999999999"],
        &["replay", "--seed", "1", "--messages", "0"],
        &["check", "--seeds", "1"],
        &["check", "--scenario", "log", "--seeds", "0"],
        &["bench", "fanout", "--messages", "0"],
        &["bench", "fanout", "--messages", "99999999999"],
        &["bench", "latency", "--rate", "0"],
        &["bench", "latency", "--messages", "99999999", "--rate", "1"],
        &["bench", "memory", "--messages", "16777216"],
        &["bench", "log", "--messages", "16000001"],
        &["bench", "fanout", "--payload", "99999999999"],
        &["bench", "wide", "--plot", "/no/such/folder/plot.svg"],
        &["bench", "wide", "--plot", "plot.png"],
        &["bench", "fanout", "--plot", "plot.svg"],
        &["demo", "--orders", "0"],
        &["demo", "--orders", "-1"],
        &["validate", "--topology", "/no/such/file.toml"],
        &["bench", "wide", "--topology", "/no/such/t.toml", "--keys", "/no/such/k.txt"],
        &["route", "--topology", "/no/such/file.toml", "a"],
    ];
    for args in cases {
        let out = tubemail(args);
        let code = out.status.code();
        assert!(matches!(code, Some(1) | Some(2)), "{args:?} exited {code:?}: {}", stderr(&out));
        assert!(!stderr(&out).trim().is_empty(), "{args:?} said nothing on stderr");
        assert!(!stderr(&out).contains("panicked"), "{args:?} panicked: {}", stderr(&out));
    }
}

/// `check --scenario log` needs no `--mode`, reports its faults by kind (in JSON too) and holds;
/// `replay --scenario log` prints the run's history, its hash and the verdict.
#[test]
fn the_log_scenario_is_checked_and_replayed() {
    let out = tubemail(&["check", "--scenario", "log", "--seeds", "4", "--seed", "10", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!((json["scenario"].as_str(), json["seeds"].as_u64()), (Some("log"), Some(4)));
    for kind in ["process-kill", "power-loss", "torn-write", "consumer-crash"] {
        assert!(json["faults"][kind].is_u64(), "{kind} in {json}");
    }
    assert_eq!(json["violations"].as_array().map(Vec::len), Some(0), "{json}");

    let out = tubemail(&["check", "--scenario", "log", "--seeds", "2"]);
    let text = stdout(&out);
    assert!(out.status.success() && text.contains("faults fired:") && text.contains("power-loss"), "{text}");

    let out = tubemail(&["replay", "--scenario", "log", "--seed", "10"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("history hash ") && text.contains("every promise held"), "{text}");
}
