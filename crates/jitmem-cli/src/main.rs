//! `jitmem`: tells what this machine allows (`probe`) and proves it (`selftest`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jitmem::selftest::{self, Outcome};

/// Executable memory for JIT compilers: what works on this machine, and why.
#[derive(Parser)]
#[command(name = "jitmem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this process may do with executable memory, and what Auto picks.
    Probe {
        /// Also map (and unmap) one writable and executable page, to tell whether the Rwx
        /// opt-in would work (not done by default: security policies and audits flag it).
        #[arg(long)]
        rwx: bool,
    },
    /// Run the whole life of a function in every strategy x layout, checking W^X; exit 0 only
    /// if everything that should work works.
    Selftest,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Probe { rwx } => {
            let probe = if rwx {
                jitmem::probe::Probe::run_trying_rwx()
            } else {
                jitmem::probe::Probe::run()
            };
            print!("{probe}");
            ExitCode::SUCCESS
        }
        Command::Selftest => selftest_table(),
    }
}

fn selftest_table() -> ExitCode {
    let rows = selftest::run();
    println!("{:<10} {:<16} result", "strategy", "layout");
    let mut failed = 0;
    for row in &rows {
        let result = match &row.outcome {
            Outcome::Pass => "pass".to_owned(),
            Outcome::Unavailable(why) => format!("unavailable here ({why})"),
            Outcome::Fail(why) => {
                failed += 1;
                format!("FAIL: {why}")
            }
        };
        println!(
            "{:<10} {:<16} {result}",
            row.strategy.to_string(),
            row.layout.to_string()
        );
    }
    let passed = rows.iter().filter(|r| r.outcome == Outcome::Pass).count();
    println!(
        "{passed} passed, {failed} failed, {} unavailable",
        rows.len() - passed - failed
    );
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
