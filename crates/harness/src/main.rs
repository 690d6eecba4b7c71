//! `tandem`: the command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tandem", version, about = "One LLM on one GPU host, with the CPU as a full partner (LIA + NEO).")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What this machine offers: CPU features and kernel tier, NUMA nodes, GPUs.
    Info {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info { json } => {
            let caps = engine::caps::Capabilities::detect();
            if json {
                println!("{}", serde_json::to_string_pretty(&caps)?);
            } else {
                println!("{caps}");
            }
        }
    }
    Ok(())
}
