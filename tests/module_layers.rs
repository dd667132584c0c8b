//! The core's modules form layers: no module imports one that imports it back, directly or through
//! others. Read from the source: every `crate::module` path, and every `crate::Name` resolved through
//! the re-exports of `lib.rs`, is an edge between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `queue` for `src/queue.rs` and `src/queue/actor.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// `Name -> module` from `pub use module::{A, B}` and `pub use module::A` lines of lib.rs.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let flat = lib.replace('\n', " ");
    for part in flat.split("pub use ").skip(1) {
        let stmt = part.split(';').next().unwrap_or_default();
        let Some((module, rest)) = stmt.split_once("::") else { continue };
        let items = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.split(" as ").last().unwrap_or_default().trim();
            let name = name.rsplit("::").next().unwrap_or_default();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// Code lines only: comments and doc comments say `crate::` without importing anything.
fn code(text: &str) -> String {
    let lines = text.lines().filter(|l| !l.trim_start().starts_with("//"));
    lines.collect::<Vec<_>>().join("\n")
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = reexports(&fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let from = module_of(&src, &file);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = code(&fs::read_to_string(&file).expect("a source file"));
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let to = match ident.chars().next() {
                Some(c) if c.is_uppercase() => names.get(&ident).cloned(),
                Some(_) => Some(ident),
                None => None,
            };
            if let Some(to) = to.filter(|to| *to != from) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// A cycle through `node`, if there is one, as the path that closes it.
fn cycle(
    graph: &Graph,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_owned());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn no_module_of_the_core_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(graph.get("broker").is_some_and(|deps| deps.contains("queue")), "the graph is read: {graph:?}");
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let found = cycle(&graph, node, &mut Vec::new(), &mut done);
        assert!(found.is_none(), "an import loop: {}", found.unwrap_or_default().join(" -> "));
    }
}

#[test]
fn the_loop_check_finds_a_loop() {
    let mut graph = Graph::new();
    graph.entry("queue".into()).or_default().insert("broker".into());
    graph.entry("broker".into()).or_default().insert("queue".into());
    let found = cycle(&graph, "queue", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(found, Some(vec!["queue".to_owned(), "broker".to_owned(), "queue".to_owned()]));
}
