//! The `kiln` command line: `kiln serve` runs one node from a config file and flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::fhir::FhirVersion;
use kiln::Config;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kiln: a replicated FHIR server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node. Flags override the config file.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see cluster-config/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder for this node's data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// FHIR version: 4.0.1 (R4) or 3.0.1 (STU3).
    #[arg(long, value_parser = parse_version)]
    fhir_version: Option<FhirVersion>,
    /// Raft node id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Absolute base URL for Location headers and links.
    #[arg(long)]
    base_url: Option<String>,
}

fn parse_version(s: &str) -> Result<FhirVersion, String> {
    toml::Value::String(s.to_string()).try_into().map_err(|_| format!("unknown FHIR version '{s}' (use 4.0.1 or 3.0.1)"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(v) = args.fhir_version {
        cfg.fhir_version = v;
    }
    if let Some(n) = args.node_id {
        cfg.node_id = n;
    }
    if let Some(b) = args.base_url {
        cfg.base_url = Some(b);
    }
    let node = kiln::start_node(cfg).map_err(|e| e.to_string())?;
    println!("Kiln listening on {}", node.base_url());
    node.wait();
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}
