//! The TOML topology file: the example parses with defaults filled in, and every kind of bad input gets
//! a one-line error with the line, column and field.

use std::time::Duration;

use tubemail::topology::{DeliveryMode, Overflow, QueueSpec, TopicKind, TopicSpec, Topology, TopologyError};

const EXAMPLE: &str = r#"[topics.events]
kind = "topic"          # topic | direct | fanout | hash
alternate = "unrouted"

[queues.billing]
depth_max = 10000
overflow = "reject-publish"   # drop-head | reject-publish | reject-publish-dlx | block
delivery = "at-least-once"    # at-least-once | at-most-once
ack_timeout_ms = 30000
delivery_limit = 20
dead_letter = "billing-dead"
message_ttl_ms = 60000
expires_ms = 600000
auto_delete = false
single_active_consumer = false
prefetch_default = 64

[queues.billing-dead]
[queues.unrouted]

[[bindings]]
topic = "events"
queue = "billing"
key = "orders.*.paid"   # default ""
weight = 1              # default 1
"#;

/// The line, column and message of a [`TopologyError::Syntax`]; panics on anything else.
#[track_caller]
fn syntax(text: &str) -> (usize, usize, String) {
    match Topology::from_toml_str(text) {
        Err(e @ TopologyError::Syntax { .. }) => {
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "not one line: {shown:?}");
            let TopologyError::Syntax { origin, message } = e else { unreachable!() };
            assert_eq!(origin.file, None);
            assert_eq!(shown, format!("line {}, column {}: {message}", origin.line, origin.column));
            (origin.line, origin.column, message)
        }
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    }
}

/// The line, column, field and message of a [`TopologyError::Invalid`]; panics on anything else.
#[track_caller]
fn invalid(text: &str) -> (usize, usize, String, String) {
    match Topology::from_toml_str(text) {
        Err(e @ TopologyError::Invalid { .. }) => {
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "not one line: {shown:?}");
            let TopologyError::Invalid { origin, field, message } = e else { unreachable!() };
            let origin = origin.unwrap_or_else(|| panic!("no origin for {field}: {message}"));
            assert_eq!(shown, format!("line {}, column {}: {field}: {message}", origin.line, origin.column));
            (origin.line, origin.column, field, message)
        }
        other => panic!("expected an invalid-value error for {text:?}, got {other:?}"),
    }
}

#[test]
fn example_file_parses_with_defaults_filled_in() {
    let topology = Topology::from_toml_str(EXAMPLE).unwrap();
    let expected = Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
        .queue(
            "billing",
            QueueSpec::default()
                .depth_max(10_000)
                .overflow(Overflow::RejectPublish)
                .delivery(DeliveryMode::AtLeastOnce)
                .ack_timeout(Duration::from_secs(30))
                .delivery_limit(20)
                .dead_letter("billing-dead")
                .message_ttl(Duration::from_secs(60))
                .expires(Duration::from_secs(600))
                .auto_delete(false)
                .single_active_consumer(false)
                .prefetch_default(64),
        )
        .queue("billing-dead", QueueSpec::default())
        .queue("unrouted", QueueSpec::default())
        .bind("events", "billing", "orders.*.paid");
    assert_eq!(topology, expected);
}

#[test]
fn omitted_fields_take_their_defaults() {
    let text = "[topics.t]\n[queues.q]\n[[bindings]]\ntopic = \"t\"\nqueue = \"q\"\n";
    let topology = Topology::from_toml_str(text).unwrap();
    assert_eq!(topology.topics["t"], TopicSpec { kind: TopicKind::Topic, alternate: None });
    let q = &topology.queues["q"];
    assert_eq!(q, &QueueSpec::default());
    assert_eq!(q.depth_max, 10_000);
    assert_eq!(q.overflow, Overflow::Block);
    assert_eq!(q.delivery, DeliveryMode::AtLeastOnce);
    assert_eq!(q.ack_timeout, Duration::from_secs(30));
    assert_eq!(q.delivery_limit, 20);
    assert_eq!((q.message_ttl, q.expires, q.dead_letter.as_deref()), (None, None, None));
    assert_eq!(q.prefetch_default, 64);
    assert_eq!((topology.bindings[0].key.as_str(), topology.bindings[0].weight), ("", 1));
    assert_eq!(Topology::from_toml_str("").unwrap(), Topology::new());
}

#[test]
fn other_kinds_and_policies_and_dotted_keys_parse() {
    let text = "[topics]\nh.kind = \"hash\"\nf = { kind = \"fanout\" }\n[topics.d]\nkind = \"direct\"\n\
                [queues]\nq.overflow = \"reject-publish-dlx\"\nq.delivery = \"at-most-once\"\n\
                r = { overflow = \"block\", auto_delete = true, single_active_consumer = true }\n\
                [[bindings]]\ntopic = \"h\"\nqueue = \"q\"\nkey = \"k\"\nweight = 5\n";
    let t = Topology::from_toml_str(text).unwrap();
    assert_eq!(t.topics["h"].kind, TopicKind::Hash);
    assert_eq!(t.topics["f"].kind, TopicKind::Fanout);
    assert_eq!(t.topics["d"].kind, TopicKind::Direct);
    assert_eq!(t.queues["q"].overflow, Overflow::RejectPublishDlx);
    assert_eq!(t.queues["q"].delivery, DeliveryMode::AtMostOnce);
    assert_eq!(t.queues["r"].overflow, Overflow::Block);
    assert!(t.queues["r"].auto_delete && t.queues["r"].single_active_consumer);
    assert_eq!(t.bindings[0].weight, 5);
}

#[test]
fn toml_syntax_error_names_line_and_table() {
    let (line, column, message) = syntax("[queues.billing]\ndepth_max = 5\n[queues.other\n");
    assert_eq!((line, column), (3, 14));
    assert!(message.contains("queues.other"), "{message}");

    let (line, column, message) = syntax("[queues.billing]\n\ndepth_max = \n");
    assert_eq!((line, column), (3, 13));
    assert!(message.contains("queues.billing.depth_max"), "{message}");
}

#[test]
fn unknown_field_is_named_with_the_allowed_ones() {
    let (line, column, message) = syntax("[queues.billing]\ndepth_max = 5\ndepth_maxx = 5\n");
    assert_eq!((line, column), (3, 1));
    assert!(message.contains("unknown field `depth_maxx`"), "{message}");
    assert!(message.contains("`depth_max`") && message.contains("`prefetch_default`"), "{message}");
    assert!(message.contains("queues.billing.depth_maxx"), "{message}");

    let (line, _, message) = syntax("[topics.events]\n\n[bogus]\n");
    assert_eq!(line, 3);
    assert!(message.contains("unknown field `bogus`") && message.contains("`bindings`"), "{message}");

    let (line, _, message) = syntax("[queues.q]\n[[bindings]]\ntopic = \"t\"\nqueue = \"q\"\nkeys = \"a\"\n");
    assert_eq!(line, 5);
    assert!(message.contains("`keys`") && message.contains("bindings[0].keys"), "{message}");
}

#[test]
fn unknown_kind_names_the_field_and_the_kinds() {
    let (line, column, message) = syntax("# topics\n[topics.events]\nkind = \"fan\"\n");
    assert_eq!((line, column), (3, 8));
    assert_eq!(
        message,
        "unknown variant `fan`, expected one of `topic`, `direct`, `fanout`, `hash` (topics.events.kind)"
    );
}

#[test]
fn unknown_overflow_names_the_field_and_the_policies() {
    let (line, column, message) = syntax("[queues.billing]\noverflow = \"drop\"\n");
    assert_eq!((line, column), (2, 12));
    assert!(message.contains("unknown variant `drop`"), "{message}");
    assert!(message.contains("`drop-head`") && message.contains("`reject-publish-dlx`"), "{message}");
    assert!(message.contains("queues.billing.overflow"), "{message}");
}

#[test]
fn unknown_delivery_names_the_field_and_the_promises() {
    let (line, _, message) = syntax("[queues.billing]\n\ndelivery = \"exactly-once\"\n");
    assert_eq!(line, 3);
    assert!(message.contains("`exactly-once`"), "{message}");
    assert!(message.contains("`at-most-once`") && message.contains("`at-least-once`"), "{message}");
    assert!(message.contains("queues.billing.delivery"), "{message}");
}

#[test]
fn wrong_type_names_the_field() {
    let (line, column, message) = syntax("[queues.billing]\ndepth_max = \"ten\"\n");
    assert_eq!((line, column), (2, 13));
    assert!(message.contains("invalid type") && message.contains("queues.billing.depth_max"), "{message}");

    let (line, _, message) = syntax("[queues.billing]\nauto_delete = 1\n");
    assert_eq!(line, 2);
    assert!(message.contains("queues.billing.auto_delete"), "{message}");

    let (line, _, message) = syntax("[topics]\nevents = \"topic\"\n");
    assert_eq!(line, 2);
    assert!(message.contains("topics.events"), "{message}");

    let text = "[topics.t]\n[queues.q]\n[[bindings]]\ntopic = \"t\"\nqueue = \"q\"\n\
                [[bindings]]\ntopic = \"t\"\nqueue = \"q\"\nweight = \"heavy\"\n";
    let (line, _, message) = syntax(text);
    assert_eq!(line, 9);
    assert!(message.contains("bindings[1].weight"), "{message}");
}

#[test]
fn negative_numbers_are_refused() {
    let (line, column, message) = syntax("[queues.billing]\nack_timeout_ms = -1\n");
    assert_eq!((line, column), (2, 18));
    assert!(message.contains("-1") && message.contains("queues.billing.ack_timeout_ms"), "{message}");

    let (line, _, message) = syntax("[queues.billing]\ndelivery_limit = 3\ndepth_max = -5\n");
    assert_eq!(line, 3);
    assert!(message.contains("queues.billing.depth_max"), "{message}");
}

#[test]
fn zero_capacities_are_invalid_at_their_line() {
    for (field, expected) in [
        ("depth_max", "must be 1 to 16777216"),
        ("delivery_limit", "must be 1 to 1000000"),
        ("ack_timeout_ms", "must be at least 1"),
        ("message_ttl_ms", "must be at least 1"),
        ("expires_ms", "must be at least 1"),
    ] {
        let text = format!("[queues.billing]\noverflow = \"block\"\n\n{field} = 0\n");
        let (line, column, got_field, message) = invalid(&text);
        assert_eq!((line, column), (4, field.len() + 4), "{field}");
        assert_eq!(got_field, format!("queues.billing.{field}"));
        assert_eq!(message, expected);
    }
    let (line, column, field, _) = invalid("[queues]\nbilling.depth_max = 0\n");
    assert_eq!((line, column, field.as_str()), (2, 21, "queues.billing.depth_max"));
    let (_, _, field, _) = invalid("[queues.billing]\ndepth_max = 16777217\n");
    assert_eq!(field, "queues.billing.depth_max");
}

#[test]
fn binding_to_unknown_topic_is_invalid() {
    let text = "[topics.events]\n[queues.q]\n\n[[bindings]]\ntopic = \"events\"\nqueue = \"q\"\n\n\
                [[bindings]]\nqueue = \"q\"\ntopic = \"evnts\"\n";
    let (line, column, field, message) = invalid(text);
    assert_eq!((line, column), (10, 9));
    assert_eq!(field, "bindings[1].topic");
    assert!(message.contains("evnts"), "{message}");
}

#[test]
fn binding_to_unknown_queue_is_invalid() {
    let text = "[topics.events]\n[queues.q]\n[[bindings]]\ntopic = \"events\"\nqueue = \"qq\"\n";
    let (line, column, field, message) = invalid(text);
    assert_eq!((line, column), (5, 9));
    assert_eq!(field, "bindings[0].queue");
    assert!(message.contains("\"qq\""), "{message}");
}

#[test]
fn binding_without_topic_is_a_syntax_error() {
    let text = "[queues.q]\n[[bindings]]\ntopic = \"t\"\nqueue = \"q\"\n[[bindings]]\nqueue = \"q\"\n";
    let (line, column, message) = syntax(text);
    assert_eq!((line, column), (5, 1));
    assert!(message.contains("missing field `topic`") && message.contains("bindings[1]"), "{message}");
}

#[test]
fn dead_letter_to_unknown_queue_is_invalid() {
    let (line, column, field, message) = invalid("[queues.billing]\ndepth_max = 5\ndead_letter = \"gone\"\n");
    assert_eq!((line, column), (3, 15));
    assert_eq!(field, "queues.billing.dead_letter");
    assert!(message.contains("\"gone\""), "{message}");
}

#[test]
fn alternate_to_unknown_queue_is_invalid() {
    let (line, column, field, message) = invalid("[queues.q]\n[topics.events]\nalternate = \"lost\"\n");
    assert_eq!((line, column), (3, 13));
    assert_eq!(field, "topics.events.alternate");
    assert!(message.contains("\"lost\""), "{message}");
}

#[test]
fn key_over_255_bytes_is_invalid() {
    let key = "k".repeat(256);
    let text = format!("[topics.d]\nkind = \"direct\"\n[queues.q]\n[[bindings]]\ntopic = \"d\"\nqueue = \"q\"\nkey = \"{key}\"\n");
    let (line, column, field, _) = invalid(&text);
    assert_eq!((line, column, field.as_str()), (7, 7, "bindings[0].key"));

    let ok = format!("[topics.d]\nkind = \"direct\"\n[queues.q]\n[[bindings]]\ntopic = \"d\"\nqueue = \"q\"\nkey = \"{}\"\n", &key[1..]);
    assert!(Topology::from_toml_str(&ok).is_ok());
}

#[test]
fn invalid_pattern_is_invalid() {
    let text = "[topics.events]\n[queues.q]\n[[bindings]]\ntopic = \"events\"\nqueue = \"q\"\nkey = \"orders.#paid\"\n";
    let (line, column, field, _) = invalid(text);
    assert_eq!((line, column, field.as_str()), (6, 7, "bindings[0].key"));
}

#[test]
fn zero_weight_is_invalid() {
    let text =
        "[topics.h]\nkind = \"hash\"\n[queues.q]\n[[bindings]]\ntopic = \"h\"\nqueue = \"q\"\nweight = 0\n";
    let (line, column, field, _) = invalid(text);
    assert_eq!((line, column, field.as_str()), (7, 10, "bindings[0].weight"));
}

#[test]
fn name_errors_point_at_the_table() {
    let name = "n".repeat(256);
    let text = format!("[topics.t]\n\n[queues.{name}]\ndepth_max = 5\n");
    let (line, column, field, message) = invalid(&text);
    assert_eq!((line, column), (3, 9));
    assert_eq!(field, format!("queues.{name}"));
    assert!(message.contains("255"), "{message}");
}

#[test]
fn load_puts_the_path_in_the_message() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir();

    let path = dir.join(format!("tubemail-topology-{}-{nanos}-a.toml", std::process::id()));
    std::fs::write(&path, "[topics.events]\n\n[queues.billing]\ndepth_max = 0\n").unwrap();
    let err = Topology::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(&err, TopologyError::Invalid { origin: Some(o), .. } if o.file.as_deref() == Some(&*path))
    );
    assert_eq!(
        err.to_string(),
        format!("{}:4:13: queues.billing.depth_max: must be 1 to 16777216", path.display())
    );

    let path = dir.join(format!("tubemail-topology-{}-{nanos}-b.toml", std::process::id()));
    std::fs::write(&path, "[topics.events]\nkind = \"fan\"\n").unwrap();
    let err = Topology::load(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(&err, TopologyError::Syntax { origin, .. } if origin.file.as_deref() == Some(&*path)));
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{}:2:8: unknown variant `fan`", path.display())), "{shown}");
    assert!(shown.ends_with("(topics.events.kind)"), "{shown}");

    let missing = dir.join(format!("tubemail-topology-{}-{nanos}-missing.toml", std::process::id()));
    let err = Topology::load(&missing).unwrap_err();
    assert!(matches!(&err, TopologyError::Io { path, .. } if *path == missing), "{err:?}");
    assert!(err.to_string().contains(&*missing.to_string_lossy()));
}

#[test]
fn windows_line_endings_and_wide_characters_count_as_one_column() {
    let (line, column, field, _) =
        invalid("# ééé\r\n[queues.\"é\"]\r\noverflow = \"block\" # é\r\ndelivery_limit = 0\r\n");
    assert_eq!((line, column, field.as_str()), (4, 18, "queues.é.delivery_limit"));
    let (line, column, _) = syntax("[queues.\"é\"]\r\noverflow = \"blok\"\r\n");
    assert_eq!((line, column), (2, 12));
    let (line, column, field, _) = invalid("[queues]\r\n\"é\".delivery_limit = 0\r\n");
    assert_eq!((line, column, field.as_str()), (2, 22, "queues.é.delivery_limit"));
}
