//! Command-line parsing and dispatch.

mod bench;
mod demo;
mod jobs;
mod log;
mod plot;
mod remote;
mod route;
mod sim;

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
        /// Orders to place (1 to 1,000,000).
        #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        orders: u32,
        /// Seed of the demo's random failures.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Run the topics, queues and bindings on a remote broker (`amqp://…` or `nats://…`), named
        /// `tubemail_demo_*` and deleted at the end; handlers and background jobs stay in this process.
        #[arg(long, value_name = "URL")]
        on: Option<String>,
    },
    /// Declares a topology file's queues, exchanges and bindings on a remote broker (idempotently).
    ///
    /// Prints object by object what existed and what it created. The broker is --on URL, else the file's `connect` line. Exit 0 when declared (with
    /// --dry-run: planned, nothing created), 2 on an error: a file that does not parse, an unknown
    /// scheme, an unreachable broker, an object that exists with other arguments (then nothing is
    /// declared).
    Declare(remote::DeclareArgs),
    /// Compares a topology file with what a remote broker has, in both directions.
    ///
    /// Reports what the file declares that the broker lacks or has with another type or other
    /// arguments, and what the broker's virtual host has that the file does not declare. The broker is --on URL, else the file's `connect` line; RabbitMQ's side is read from its
    /// management API (port 15672, or RABBITMQ_MANAGEMENT_URL). Exit 0 when there is no drift, 1
    /// when there is, 2 on an error or when part could not be checked (the management API did not
    /// answer).
    Diff(remote::DiffArgs),
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
    /// Measures a scenario against a raw crossbeam-channel baseline of the same shape, in one run.
    Bench {
        /// fanout (4 queues, 8 keys), work-queue (1 queue, 4 consumers), wide (1 to 1,000 queues),
        /// bindings (10 to 100,000 patterns), latency (a paced publisher), memory, log (the event log
        /// against raw file writes); with `--topology` and `--keys`, a topology and key mix of your own.
        /// (default: fanout)
        #[arg(value_enum)]
        scenario: Option<Scenario>,
        /// Messages to publish per run (1 to 100,000,000; `memory` takes at most 16,777,215; `log`
        /// appends this many records per run and reopens a log of as many, at most 16,000,000)
        /// [default: 200,000; log: 1,000,000].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        messages: Option<u64>,
        /// Payload size in bytes (0 to 16 MiB) [default: 64; log: 100, the record's value].
        #[arg(long, value_parser = payload_size)]
        payload: Option<usize>,
        /// Delivery mode; both when left out.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also run the scenario against RabbitMQ (127.0.0.1:5672) and NATS (127.0.0.1:4222) where
        /// they answer; `log` against NATS JetStream and Redis (127.0.0.1:6379) (a build with
        /// `--features peers`).
        #[arg(long)]
        peers: bool,
        /// Run `fanout` on a remote broker (`amqp://…`), through tubemail and through the broker's
        /// own client in the same run (a build with `--features peers`).
        #[arg(long, value_name = "URL")]
        on: Option<String>,
        /// Draw the results as SVG (wide, bindings, latency, log).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Publishes per second of the latency scenario (1 to 10,000,000).
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        rate: u64,
        /// A topology file of your own (its first topic is published to).
        #[arg(long, requires = "keys")]
        topology: Option<PathBuf>,
        /// Routing keys of your own, one per line, published in turn.
        #[arg(long, requires = "topology")]
        keys: Option<PathBuf>,
    },
    /// Runs a simulated scenario over many seeds with injected faults and checks its promises.
    Check {
        /// The delivery mode to judge (required but for `--scenario log`, which judges both).
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// `all`, `none`, fault kinds separated by commas (drop, duplicate, delay, ack-loss,
        /// crash-before, crash-after, queue-restart, confirm-loss, slow), each optionally `=P`, or a
        /// TOML file of a fault plan (`plan.toml`).
        #[arg(long, default_value = "all")]
        faults: String,
        /// How many seeds (1 to 100,000,000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        seeds: u64,
        /// The first seed (seeds run from it upwards).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Messages per run (1 to 1,000,000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        messages: u32,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Which scenario: the built-in one (a static topology, judged by each queue's promise), the
        /// lifecycle one (queues and subscribers come and go, then a shutdown), both of those, or the
        /// log one (a stream on disk and two consumer groups under process kills, power losses, torn
        /// writes and handler crashes; it draws its own faults and workload from the seed, so
        /// `--mode`, `--faults` and `--messages` do not apply).
        #[arg(long, value_enum, default_value = "both")]
        scenario: SimScenario,
        /// Refused, with the reason: the simulator injects its faults inside this process and
        /// replays them from the seed, which a remote broker cannot; run the conformance suite
        /// (`cargo test --test conformance`) against RabbitMQ or NATS instead.
        #[arg(long, value_name = "URL")]
        on: Option<String>,
    },
    /// Prints the history of one simulated run: the same seed always prints the same run.
    Replay {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// As for `check`.
        #[arg(long, default_value = "all")]
        faults: String,
        /// The delivery mode.
        #[arg(long, value_enum, default_value = "at-least-once")]
        mode: Mode,
        /// Messages in the run (1 to 1,000,000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        messages: u32,
        /// Every event, not only the first 200.
        #[arg(long)]
        full: bool,
        /// Which scenario to replay.
        #[arg(long, value_enum, default_value = "built-in")]
        scenario: SimScenario,
    },
    /// Checks a topology file; prints the first error with its line, exits 1 on error.
    Validate {
        /// The topology file (TOML).
        #[arg(long)]
        topology: PathBuf,
    },
    /// The event log's directories: inspect, dump, verify, append, torture.
    ///
    /// Exit 1 when the log is damaged or locked or a check fails, 2 when the request cannot be
    /// served as asked (a bad argument or input line, an unknown stream, an offset out of range).
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
    /// Background jobs' directories: inspect, torture.
    ///
    /// Exit 1 when the journal cannot be read or a check fails, 2 when the request cannot be served
    /// as asked.
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
}

/// The simulator's scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SimScenario {
    /// A topic, a work queue with competing consumers, a single-active-consumer queue.
    BuiltIn,
    /// Queues declared, deleted, bound, unbound, subscribed and unsubscribed while messages flow.
    Lifecycle,
    /// The built-in and the lifecycle scenarios, for every seed.
    Both,
    /// A stream on disk and its consumer groups under crashes, power losses and torn writes.
    Log,
    /// Background jobs on disk under crashes, shutdowns, clock jumps, timeouts and cancellations.
    Jobs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// 1 publisher, 4 queues (`orders.*`, `orders.paid`, `#`, `contracts.#`), 8 keys.
    Fanout,
    /// One queue, 4 competing consumers, acks.
    WorkQueue,
    /// One fanout topic, 1, 10, 100 and 1,000 queues.
    Wide,
    /// 10, 1,000 and 100,000 pattern bindings: routing throughput.
    Bindings,
    /// A paced publisher: p50/p99/p99.9/max publish → handler.
    Latency,
    /// Bytes per queued message, idle queue and idle subscriber; peak RSS.
    Memory,
    /// 8 queues with CPU-bound handlers: deliveries/s on one arbiter and on one per core.
    Arbiters,
    /// A handler that blocks for 200 ms on one queue: another queue's latency, one arbiter and one
    /// per core.
    Isolation,
    /// The event log: appends of 100-byte records in memory and under each fsync policy (1 to 256 in
    /// flight) against raw writes of the same bytes, reading as it appends, reopening.
    Log,
    /// Background jobs: no-op jobs enqueued and performed, in memory and durable, against a thread
    /// pool fed by a crossbeam channel; the start delay of scheduled jobs under that load.
    Jobs,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::WorkQueue => "work-queue",
            Scenario::Wide => "wide",
            Scenario::Bindings => "bindings",
            Scenario::Latency => "latency",
            Scenario::Memory => "memory",
            Scenario::Arbiters => "arbiters",
            Scenario::Isolation => "isolation",
            Scenario::Log => "log",
            Scenario::Jobs => "jobs",
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    AtMostOnce,
    AtLeastOnce,
}

impl Mode {
    fn delivery(self) -> tubemail::DeliveryMode {
        match self {
            Mode::AtMostOnce => tubemail::DeliveryMode::AtMostOnce,
            Mode::AtLeastOnce => tubemail::DeliveryMode::AtLeastOnce,
        }
    }
}

/// A fault plan from `--faults`: a TOML file of the plan's fields, or kinds as `FaultPlan` parses them.
/// A payload size: 0 to 16 MiB.
fn payload_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n > 16 << 20 {
        return Err(format!("{n} is above 16 MiB ({})", 16 << 20));
    }
    Ok(n)
}

fn fault_plan(faults: &str) -> Result<tubemail_sim::FaultPlan, String> {
    if faults.trim().is_empty() {
        return Err("--faults is empty: name fault kinds, `all`, or `none`".to_owned());
    }
    if faults.ends_with(".toml") {
        let text = std::fs::read_to_string(faults).map_err(|e| format!("cannot read {faults}: {e}"))?;
        let plan: tubemail_sim::FaultPlan = toml::from_str(&text).map_err(|e| {
            // `file:line:column: message`, as topology errors are reported.
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{column}")
            });
            format!("{faults}{}: {}", at.unwrap_or_default(), e.message().trim())
        })?;
        plan.validate().map_err(|e| format!("{faults}: {e}"))?;
        return Ok(plan);
    }
    faults.parse().map_err(|e| format!("--faults {faults:?}: {e}"))
}

fn verdict(held: Result<bool, String>) -> Result<(), String> {
    match held {
        Ok(true) => Ok(()),
        Ok(false) => Err("the delivery promise was broken (see above)".to_owned()),
        Err(e) => Err(e),
    }
}

impl Cli {
    /// Whether this is `tubemail bench memory`, which counts live heap bytes.
    pub(crate) fn measures_memory(&self) -> bool {
        matches!(self.command, Command::Bench { scenario: Some(Scenario::Memory), .. })
    }

    pub(crate) fn run(self) -> ExitCode {
        let command = match self.command {
            // Its exit codes tell damage (1) from a request that cannot be served (2).
            Command::Log { command } => return log::run(command),
            Command::Jobs { command } => return jobs::run(command),
            // Exit 1 is drift, 2 an error.
            Command::Declare(args) => return remote::declare(&args),
            Command::Diff(args) => return remote::diff(&args),
            other => other,
        };
        let result = match command {
            Command::Check { on: Some(url), .. } => Err(format!(
                "check --on {}: the simulator injects its faults inside this process and replays them from \
                 the seed, which a remote broker cannot do; the same promises are checked against RabbitMQ \
                 and NATS by the conformance suite: cargo test --test conformance",
                tubemail::remote::redact(&url)
            )),
            Command::Check { mode, faults, seeds, seed, messages, json, scenario, on: None } => {
                let mode = match (mode, scenario) {
                    (Some(mode), _) => Ok(mode.delivery()),
                    // The log scenario judges an at-least-once and an at-most-once group in every run.
                    (None, SimScenario::Log | SimScenario::Jobs) => Ok(tubemail::DeliveryMode::AtLeastOnce),
                    (None, _) => Err("--mode is required (at-least-once or at-most-once)".to_owned()),
                };
                let plan = mode.and_then(|mode| fault_plan(&faults).map(|plan| (mode, plan)));
                verdict(plan.and_then(|(mode, plan)| {
                    let args = sim::CheckArgs {
                        mode,
                        faults: plan,
                        faults_arg: faults.clone(),
                        seeds,
                        first_seed: seed,
                        messages,
                        json,
                        scenario,
                    };
                    sim::check(&args)
                }))
            }
            Command::Replay { seed, faults, mode, messages, full, scenario: which } => {
                verdict(fault_plan(&faults).map(|plan| {
                    let scenario = tubemail_sim::Scenario {
                        mode: mode.delivery(),
                        messages,
                        plan,
                        ..Default::default()
                    };
                    sim::replay(&scenario, seed, full, which)
                }))
            }
            Command::Demo { orders, seed, on } => demo::run(orders, seed, on.as_deref()),
            Command::Route { topology, topic, json, keys } => {
                route::run(&topology, topic.as_deref(), json, &keys)
            }
            Command::Validate { topology } => validate(&topology),
            Command::Bench {
                scenario,
                messages,
                payload,
                mode,
                json,
                peers,
                on,
                plot,
                rate,
                topology,
                keys,
            } => {
                let modes = match mode {
                    Some(m) => vec![m.delivery()],
                    None => vec![tubemail::DeliveryMode::AtMostOnce, tubemail::DeliveryMode::AtLeastOnce],
                };
                let scenario = match (scenario, &topology) {
                    (None, Some(_)) => Ok("custom"),
                    (Some(s), Some(_)) => Err(format!(
                        "--topology and --keys run a scenario of their own: leave out {:?}",
                        s.name()
                    )),
                    (s, None) => Ok(s.unwrap_or(Scenario::Fanout).name()),
                };
                let log = matches!(scenario, Ok("log"));
                let messages = messages.unwrap_or(if log { 1_000_000 } else { 200_000 });
                let payload = payload.unwrap_or(if log { 100 } else { 64 });
                scenario.and_then(|scenario| {
                    let args = bench::BenchArgs {
                        scenario,
                        messages,
                        payload,
                        modes,
                        json,
                        peers,
                        on,
                        plot,
                        rate,
                        topology,
                        keys,
                    };
                    bench::run(&args)
                })
            }
            Command::Log { .. } | Command::Jobs { .. } | Command::Declare(_) | Command::Diff(_) => {
                unreachable!("dispatched above")
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
        "{}: ok ({} topics, {} queues, {} streams, {} bindings)",
        path.display(),
        topology.topics.len(),
        topology.queues.len(),
        topology.streams.len(),
        topology.bindings.len()
    );
    for warning in topology.warnings() {
        println!("warning: {}: {warning}", path.display());
    }
    Ok(())
}
