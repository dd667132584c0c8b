//! An application that embeds the broker compiles nothing of the command line, the benchmarks or the
//! simulator: `cargo tree` of the core's normal dependencies names none of their crates, and tokio
//! comes without `test-util`.

use std::process::Command;

/// Crates that only the `tubemail` command, the benchmarks or the simulator need.
const NOT_IN_THE_CORE: [&str; 16] = [
    "clap",
    "plotters",
    "indicatif",
    "mimalloc",
    "hdrhistogram",
    "proptest",
    "criterion",
    "lapin",
    "async-nats",
    "redis",
    "apalis",
    "apalis-redis",
    "rand_chacha",
    "tubemail-sim",
    "tubemail-bench",
    "tubemail-cli",
];

fn cargo_tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-p", "tubemail", "--prefix", "none"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_core_compiles_none_of_the_commands_benchmarks_or_simulators_crates() {
    let tree = cargo_tree(&["-e", "normal,build"]);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"actix"), "the tree lists the core's dependencies:\n{tree}");
    for crate_name in NOT_IN_THE_CORE {
        assert!(!names.contains(&crate_name), "{crate_name} is a dependency of the core:\n{tree}");
    }
}

#[test]
fn the_core_uses_tokio_without_test_util() {
    let features = cargo_tree(&["-e", "normal,features", "-i", "tokio"]);
    assert!(features.contains("tokio feature \"time\""), "the tree lists tokio's features:\n{features}");
    assert!(!features.contains("test-util"), "tokio's test-util reaches the core:\n{features}");
}

#[test]
fn the_broken_variants_are_not_in_a_normal_build() {
    let features = cargo_tree(&["-e", "normal,features", "-i", "tubemail"]);
    assert!(!features.contains("tubemail feature \"broken\""), "{features}");
}
