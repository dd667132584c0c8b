//! Command-line parsing and dispatch.

mod bench;
mod demo;
mod route;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tubemail::Topology;

/// tubemail: an in-process message broker.
#[derive(Debug, Parser)]
#[command(name = "tubemail", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a modular monolith (Orders, Contracts, Partners, Support, Business) exchanging events.
    Demo {
        /// Orders to place.
        #[arg(long, default_value_t = 3000)]
        orders: u32,
        /// Seed of the demo's random failures.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Prints which queues each routing key reaches.
    Route {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
        /// The topic; may be left out when the file declares only one.
        #[arg(long)]
        topic: Option<String>,
        /// One JSON object mapping each key to its sorted list of queues.
        #[arg(long)]
        json: bool,
        /// Routing keys.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
    },
    /// Measures a scenario against a raw crossbeam-channel baseline of the same shape.
    Bench {
        /// The scenario.
        #[arg(value_enum)]
        scenario: Scenario,
        /// Messages to publish per run.
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Delivery mode; both when left out.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Checks a topology file; prints the first error with its line, exits 1 on error.
    Validate {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// 1 publisher, 4 queues (`orders.*`, `orders.paid`, `#`, `contracts.#`), 8 keys.
    Fanout,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    AtMostOnce,
    AtLeastOnce,
}

impl Cli {
    pub(crate) fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Demo { orders, seed } => demo::run(orders, seed),
            Command::Route { topology, topic, json, keys } => {
                route::run(&topology, topic.as_deref(), json, &keys)
            }
            Command::Validate { topology } => validate(&topology),
            Command::Bench { scenario: Scenario::Fanout, messages, payload, mode, json } => {
                let modes = match mode {
                    Some(Mode::AtMostOnce) => vec![tubemail::DeliveryMode::AtMostOnce],
                    Some(Mode::AtLeastOnce) => vec![tubemail::DeliveryMode::AtLeastOnce],
                    None => vec![tubemail::DeliveryMode::AtMostOnce, tubemail::DeliveryMode::AtLeastOnce],
                };
                bench::fanout(messages, payload, &modes, json)
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        }
    }
}

fn validate(path: &std::path::Path) -> Result<(), String> {
    let topology = Topology::load(path).map_err(|e| e.to_string())?;
    println!(
        "{}: ok ({} topics, {} queues, {} bindings)",
        path.display(),
        topology.topics.len(),
        topology.queues.len(),
        topology.bindings.len()
    );
    Ok(())
}
