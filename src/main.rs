use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// vehicle-connect: vehicle events to clients' webhooks and FTP servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRD YAML (the same as crds/).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir } => match out_dir {
            None => print!("{}", vehicle_connect::api::crds_yaml()?),
            Some(dir) => {
                for (name, yaml) in vehicle_connect::api::crd_files()? {
                    std::fs::write(dir.join(&name), yaml)
                        .with_context(|| format!("writing {name}"))?;
                }
            }
        },
    }
    Ok(())
}
