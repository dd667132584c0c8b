//! Command-line parsing and dispatch.

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
    /// Checks a topology file; prints the first error with its line, exits 1 on error.
    Validate {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
    },
}

impl Cli {
    pub(crate) fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Demo { orders, seed } => demo::run(orders, seed),
            Command::Route { topology, topic, json, keys } => {
                route::run(&topology, topic.as_deref(), json, &keys)
            }
            Command::Validate { topology } => validate(&topology),
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
