//! The `tubemail` command: a demo, a routing checker and a topology validator.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}

/// The command's allocator: tubemail allocates a little per message (the shared message, the route,
/// the batches between actors), where glibc's allocator measured as a fifth of the fan-out benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
