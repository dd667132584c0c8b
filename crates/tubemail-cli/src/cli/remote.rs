//! `tubemail declare` and `tubemail diff`: a topology file on a remote broker, through
//! `tubemail::remote::admin`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tubemail::remote::admin;
use tubemail::Topology;

/// `diff`: the broker has drifted from the file.
const EXIT_DRIFT: u8 = 1;
/// Any command here: the request could not be served, or not in full.
const EXIT_ERROR: u8 = 2;

/// Where and what to declare.
#[derive(Debug, clap::Args)]
pub(crate) struct DeclareArgs {
    /// The topology file (TOML).
    #[arg(long)]
    topology: PathBuf,
    /// The broker: `amqp://user:password@host:5672/vhost` (RabbitMQ); the file's `connect` line
    /// when left out.
    #[arg(long, value_name = "URL")]
    on: Option<String>,
    /// Print what would be created, and create nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What to compare with which broker.
#[derive(Debug, clap::Args)]
pub(crate) struct DiffArgs {
    /// The topology file (TOML).
    #[arg(long)]
    topology: PathBuf,
    /// The broker: `amqp://user:password@host:5672/vhost` (RabbitMQ); the file's `connect` line
    /// when left out.
    #[arg(long, value_name = "URL")]
    on: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn declare(args: &DeclareArgs) -> ExitCode {
    let planned = target(&args.topology, args.on.as_deref()).and_then(|(topology, url)| {
        block_on(admin::declare(&url, &topology, args.dry_run)).map_err(|e| e.to_string())
    });
    match planned {
        Ok(plan) => {
            print(&plan, args.json);
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

pub(crate) fn diff(args: &DiffArgs) -> ExitCode {
    let compared = target(&args.topology, args.on.as_deref())
        .and_then(|(topology, url)| block_on(admin::diff(&url, &topology)).map_err(|e| e.to_string()));
    let drift = match compared {
        Ok(drift) => drift,
        Err(message) => return fail(&message),
    };
    print(&drift, args.json);
    if !drift.is_empty() {
        ExitCode::from(EXIT_DRIFT)
    } else if !drift.is_complete() {
        fail("part of the diff could not be checked (see `not checked`)")
    } else {
        ExitCode::SUCCESS
    }
}

/// The topology in `path` and the broker to use: `on`, else the file's `connect` line.
fn target(path: &Path, on: Option<&str>) -> Result<(Topology, String), String> {
    let topology = Topology::load(path).map_err(|e| e.to_string())?;
    let url = on.map(str::to_owned).or_else(|| topology.connect.clone()).ok_or_else(|| {
        format!(
            "{} names no broker: pass --on URL (amqp://user:password@host:5672/vhost), or add a \
             `connect = \"amqp://…\"` line to the file",
            path.display()
        )
    })?;
    Ok((topology, url))
}

fn block_on<F: Future>(future: F) -> F::Output {
    actix::System::new().block_on(future)
}

fn print<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) {
    match json {
        true => match serde_json::to_string(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot write JSON: {e}"),
        },
        false => println!("{value}"),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_ERROR)
}
