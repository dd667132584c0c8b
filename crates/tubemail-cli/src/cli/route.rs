//! `tubemail route`: which queues each routing key reaches, without starting a broker.

use std::collections::BTreeMap;
use std::path::Path;

use smallvec::SmallVec;
use tubemail::ids::QueueId;
use tubemail::routing::{validate_key, RoutingTable};
use tubemail::topology::Target;
use tubemail::Topology;

pub(crate) fn run(path: &Path, topic: Option<&str>, json: bool, keys: &[String]) -> Result<(), String> {
    let topology = Topology::load(path).map_err(|e| e.to_string())?;
    let topic = choose_topic(&topology, topic)?;
    let kind = topology.topics[&topic].kind;
    // Queues by their names, then streams as `stream:NAME`: one id space for the table.
    let names: Vec<String> = topology
        .queues
        .keys()
        .cloned()
        .chain(topology.streams.keys().map(|s| format!("stream:{s}")))
        .collect();
    let id_of = |target: &Target| {
        let name = match target {
            Target::Queue(q) => q.clone(),
            Target::Stream(s) => format!("stream:{s}"),
        };
        QueueId(names.iter().position(|n| *n == name).expect("validated target") as u32)
    };
    let mut table = RoutingTable::new(kind);
    for b in topology.bindings.iter().filter(|b| b.topic == topic) {
        table.bind(id_of(&b.target), &b.key, b.weight).map_err(|e| e.to_string())?;
    }
    let alternate = topology.topics[&topic].alternate.as_deref();
    let mut routes: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    let mut out = SmallVec::new();
    for key in keys {
        validate_key(key).map_err(|e| format!("key {key:?}: {e}"))?;
        table.route(key, &mut out);
        let mut queues: Vec<&str> = out.iter().map(|id| names[id.0 as usize].as_str()).collect();
        queues.sort_unstable();
        // An unroutable key goes to the topic's alternate queue, as the broker would send it.
        let (text, value) = match (queues.is_empty(), alternate) {
            (false, _) => (queues.join(","), serde_json::json!(queues)),
            (true, Some(alt)) => (format!("{alt} (alternate)"), serde_json::json!({ "alternate": alt })),
            // Dropped as unroutable: nothing after the tab, an empty list.
            (true, None) => (String::new(), serde_json::json!([])),
        };
        if !json {
            println!("{key}\t{text}");
        }
        routes.insert(key, value);
    }
    if json {
        println!("{}", serde_json::to_string(&routes).expect("strings serialize"));
    }
    Ok(())
}

fn choose_topic(topology: &Topology, topic: Option<&str>) -> Result<String, String> {
    let names: Vec<&String> = topology.topics.keys().collect();
    match (topic, names.as_slice()) {
        (Some(t), _) if topology.topics.contains_key(t) => Ok(t.to_owned()),
        (Some(t), _) => Err(format!("no topic named {t:?} (topics: {})", join(&names))),
        (None, [only]) => Ok((*only).clone()),
        (None, []) => Err("the topology declares no topic".to_owned()),
        (None, _) => {
            Err(format!("the topology declares several topics; choose one with --topic ({})", join(&names)))
        }
    }
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}
