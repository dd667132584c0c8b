//! The pure half of `declare` and `diff`: what to do with each object, and the drift, from what a
//! topology maps to and what the broker has. No I/O: each backend gathers both sides.

// Only the backends call into it; a build without them still compiles (and tests) it.
#![cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Difference, Object, Step};
use crate::remote::RemoteError;

impl Object {
    pub(super) fn is_binding(&self) -> bool {
        matches!(self, Object::Binding { .. } | Object::ExchangeBinding { .. })
    }
}

/// An object's fields as text, compared as they are: `type`, `durable`, `auto_delete`, arguments.
pub(crate) type Fields = BTreeMap<String, String>;

/// What a side has: every object with its fields (a binding has none).
pub(crate) type Inventory = BTreeMap<Object, Fields>;

/// What is known of the broker's side.
pub(crate) enum Seen {
    /// Everything, from the management API.
    All(Inventory),
    /// Only which of the topology's queues and exchanges exist (passive declarations), because the
    /// management API did not answer, for the reason given.
    Existing { objects: BTreeSet<Object>, why: String },
}

/// A string value as fields show it: quoted, so that `"100"` is not `100`.
pub(crate) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// The fields that differ between `file` and `broker`.
fn differences(object: &Object, file: &Fields, broker: &Fields) -> Vec<Difference> {
    let names: BTreeSet<&String> = file.keys().chain(broker.keys()).collect();
    names
        .into_iter()
        .filter(|name| file.get(*name) != broker.get(*name))
        .map(|name| Difference {
            object: object.clone(),
            field: name.clone(),
            file: file.get(name).cloned(),
            broker: broker.get(name).cloned(),
        })
        .collect()
}

/// Each of `desired`'s objects with what to do with it, or the objects that exist otherwise.
pub(crate) fn plan(desired: &Inventory, seen: &Seen, dry_run: bool) -> Result<Vec<Step>, Vec<Difference>> {
    let create = if dry_run { Action::WouldCreate } else { Action::Created };
    let mut conflicts = Vec::new();
    let steps = desired
        .iter()
        .map(|(object, fields)| {
            let action = match seen {
                Seen::All(broker) => match broker.get(object) {
                    None => create,
                    Some(there) => {
                        conflicts.extend(differences(object, fields, there));
                        Action::Exists
                    }
                },
                Seen::Existing { .. } if object.is_binding() => {
                    if dry_run {
                        Action::Unknown
                    } else {
                        Action::Declared
                    }
                }
                Seen::Existing { objects, .. } if objects.contains(object) => Action::Exists,
                Seen::Existing { .. } => create,
            };
            Step { object: object.clone(), action }
        })
        .collect();
    if conflicts.is_empty() {
        Ok(steps)
    } else {
        Err(conflicts)
    }
}

/// The drift between `desired` and what is known of the broker: (missing, differs, extra, unchecked).
pub(crate) fn drift(
    desired: &Inventory,
    seen: &Seen,
) -> (Vec<Object>, Vec<Difference>, Vec<Object>, Vec<String>) {
    match seen {
        Seen::All(broker) => {
            let missing = desired.keys().filter(|o| !broker.contains_key(*o)).cloned().collect();
            let extra = broker.keys().filter(|o| !desired.contains_key(*o)).cloned().collect();
            let differs = desired
                .iter()
                .filter_map(|(o, fields)| broker.get(o).map(|there| differences(o, fields, there)))
                .flatten()
                .collect();
            (missing, differs, extra, Vec::new())
        }
        Seen::Existing { objects, why } => {
            let missing =
                desired.keys().filter(|o| !o.is_binding() && !objects.contains(*o)).cloned().collect();
            let unchecked = vec![format!(
                "what the broker has beyond the file, and the types, arguments and bindings of what \
                 the file declares (only the existence of its queues and exchanges was checked): {why}"
            )];
            (missing, Vec::new(), Vec::new(), unchecked)
        }
    }
}

/// The error of a declaration that RabbitMQ would refuse: every object that exists otherwise.
pub(crate) fn conflict_error(backend: &'static str, conflicts: &[Difference]) -> RemoteError {
    let objects: BTreeSet<String> = conflicts.iter().map(|d| d.object.to_string()).collect();
    let what = match objects.len() {
        1 => objects.iter().next().cloned().unwrap_or_default(),
        n => format!("{n} objects"),
    };
    let fields: Vec<String> = conflicts
        .iter()
        .map(|d| {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
            format!(
                "{} {} is {} on the broker, {} in the file",
                d.object,
                d.field,
                show(&d.broker),
                show(&d.file)
            )
        })
        .collect();
    RemoteError::Declare {
        backend,
        what,
        reason: format!(
            "{} with other fields, so nothing was declared: {}; delete {} on the broker or change the \
             file (`tubemail diff` shows every difference)",
            if objects.len() == 1 { "it exists" } else { "they exist" },
            fields.join("; "),
            if objects.len() == 1 { "it" } else { "them" },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn desired() -> Inventory {
        let mut d = Inventory::new();
        d.insert(Object::queue("billing"), fields(&[("type", "\"quorum\""), ("x-max-length", "100")]));
        d.insert(Object::exchange("events"), fields(&[("type", "\"topic\"")]));
        d.insert(Object::binding("events", "billing", "orders.#"), Fields::new());
        d
    }

    #[test]
    fn the_same_inventory_plans_nothing_and_drifts_nowhere() {
        let seen = Seen::All(desired());
        let steps = plan(&desired(), &seen, false).unwrap();
        assert!(steps.iter().all(|s| s.action == Action::Exists), "{steps:?}");
        let (missing, differs, extra, unchecked) = drift(&desired(), &seen);
        assert!(missing.is_empty() && differs.is_empty() && extra.is_empty() && unchecked.is_empty());
    }

    #[test]
    fn an_empty_broker_plans_everything_and_misses_everything() {
        let seen = Seen::All(Inventory::new());
        let steps = plan(&desired(), &seen, true).unwrap();
        assert!(steps.iter().all(|s| s.action == Action::WouldCreate), "{steps:?}");
        let (missing, _, extra, _) = drift(&desired(), &seen);
        assert_eq!(missing.len(), 3);
        assert!(extra.is_empty());
    }

    #[test]
    fn an_argument_that_differs_is_a_conflict_and_a_difference() {
        let mut broker = desired();
        broker.insert(Object::queue("billing"), fields(&[("type", "\"quorum\""), ("x-max-length", "200")]));
        broker.insert(Object::queue("stray"), Fields::new());
        let seen = Seen::All(broker);
        let conflicts = plan(&desired(), &seen, false).unwrap_err();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            (conflicts[0].file.as_deref(), conflicts[0].broker.as_deref()),
            (Some("100"), Some("200"))
        );
        let (missing, differs, extra, _) = drift(&desired(), &seen);
        assert!(missing.is_empty());
        assert_eq!(differs, conflicts);
        assert_eq!(extra, vec![Object::queue("stray")]);
        let text = conflict_error("rabbitmq", &conflicts).to_string();
        assert!(text.contains("queue billing x-max-length is 200 on the broker, 100 in the file"), "{text}");
    }

    #[test]
    fn without_the_api_bindings_are_unknown_and_both_halves_are_named() {
        let seen = Seen::Existing { objects: [Object::queue("billing")].into(), why: "no API".to_owned() };
        let steps = plan(&desired(), &seen, true).unwrap();
        let actions: Vec<Action> = steps.iter().map(|s| s.action).collect();
        assert_eq!(actions, [Action::Exists, Action::WouldCreate, Action::Unknown]);
        let (missing, _, _, unchecked) = drift(&desired(), &seen);
        assert_eq!(missing, vec![Object::exchange("events")]);
        assert_eq!(unchecked.len(), 1);
        assert!(unchecked[0].contains("no API"), "{unchecked:?}");
    }

    #[test]
    fn alternate_exchanges_are_told_by_their_name() {
        assert_eq!(
            Object::exchange("tubemail.alternate.events"),
            Object::AlternateExchange { name: "tubemail.alternate.events".to_owned() }
        );
        let json = serde_json::to_string(&Object::binding("e", "q", "k")).unwrap();
        assert_eq!(json, r#"{"kind":"binding","exchange":"e","queue":"q","key":"k"}"#);
    }
}
