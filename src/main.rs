//! The `tubemail` command: a demo, a routing checker and a topology validator.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
