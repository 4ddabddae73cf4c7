//! The `kiln` command line: `kiln serve` runs one node from a config file and flags; `kiln cluster`
//! runs a local cluster and manages membership (see `kiln::launcher`); `kiln token` prints a
//! development JWT; `kiln import` / `kiln backup` / `kiln restore` move data in and out
//! (`kiln::dataio`).

mod cli;

use cli::admin::{cluster, reindex, token, ClusterCommand, ReindexArgs, TokenArgs};
use cli::data::{backup, compact, import, restore, storage, BackupArgs, CompactArgs, ImportArgs, RestoreArgs, StorageArgs};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::fhir::FhirVersion;
use kiln::Config;

/// mimalloc instead of the system allocator: the apply path allocates many small buffers (sled
/// nodes, index rows), and glibc malloc took ~30% of the Raft thread's time in a profile of
/// transaction ingest (docs/benchmarks.md "Transactions").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kiln: a replicated FHIR server")]
struct Cli {
    /// Log line format on stderr: text (default) or json. Overrides the config's [log] format.
    #[arg(long, global = true, env = "KILN_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<kiln::config::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node. Flags override the config file.
    Serve(ServeArgs),
    /// A local multi-node cluster, and membership of a running one.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print an HS256 JWT for development and tests (the node's [auth] hs256_secret_file verifies it).
    Token(TokenArgs),
    /// Rebuild Meilisearch from the replicated state: empties Kiln's indexes, resets the indexer's
    /// cursor through Raft, then shows progress until the backlog is 0 (safe to run again).
    Reindex(ReindexArgs),
    /// Load NDJSON (a file, a folder of *.ndjson, or - for stdin) through batch Bundles;
    /// resumable (a state file records the settled position); rejected lines are reported as
    /// file:line and make the exit code 2.
    Import(ImportArgs),
    /// Copy one node's state at its applied index (operator API, GET /_cluster/backup) into a
    /// folder: state.kbak and manifest.json (index, term, digests).
    Backup(BackupArgs),
    /// Build the data dirs of a NEW cluster (DATA_DIR/node1..N) from a backup, after checking its
    /// digests; then `kiln cluster up --data-dir DATA_DIR` or `kiln serve --data-dir DATA_DIR/node1`.
    Restore(RestoreArgs),
    /// Where a STOPPED node's disk goes: live bytes per tree and key class (versions, history,
    /// index rows, Raft log) against sled's files, i.e. the space amplification.
    Storage(StorageArgs),
    /// Rewrite a STOPPED node's database into a fresh folder (only live pages; `[storage]` of
    /// --config applies to it) and swap it in; the old one is kept as DATA_DIR.before-compact.
    Compact(CompactArgs),
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
    /// Node id from the host name's ordinal (kiln-0 → 1): one config for every StatefulSet pod
    /// (sets node_id_from_hostname).
    #[arg(long)]
    node_id_from_hostname: bool,
    /// Operator API listen address (membership, digest), e.g. 127.0.0.1:8180.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Absolute base URL for Location headers and links.
    #[arg(long)]
    base_url: Option<String>,
    /// Serve without authentication on a non-loopback address (auth.insecure_no_auth): only
    /// behind a proxy that authenticates.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Plain HTTP on a non-loopback address (allow_plain_http): only behind a proxy that
    /// terminates TLS.
    #[arg(long)]
    allow_plain_http: bool,
    /// TLS on the FHIR API: PEM certificate chain (sets api_tls.cert; reloaded when it changes).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (sets api_tls.key).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA that client certificates are verified against (sets api_tls.client_ca).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Meilisearch base URL for _content / _text (sets meilisearch.url).
    #[arg(long)]
    meilisearch_url: Option<String>,
    /// File holding the Meilisearch master or admin key (sets meilisearch.api_key_file).
    #[arg(long)]
    meilisearch_key_file: Option<PathBuf>,
}

fn parse_log_format(s: &str) -> Result<kiln::config::LogFormat, String> {
    toml::Value::String(s.to_string()).try_into().map_err(|_| format!("unknown log format '{s}' (use text or json)"))
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
    if args.node_id_from_hostname {
        cfg.node_id_from_hostname = true;
    }
    kiln::identity::resolve(&mut cfg, kiln::identity::hostname, args.node_id.is_some()).map_err(|e| e.to_string())?;
    if let Some(a) = args.admin_listen {
        cfg.admin_listen = Some(a);
    }
    if let Some(b) = args.base_url {
        cfg.base_url = Some(b);
    }
    if args.insecure_no_auth {
        cfg.auth.insecure_no_auth = true;
    }
    if args.allow_plain_http {
        cfg.allow_plain_http = true;
    }
    if let Some(u) = args.meilisearch_url {
        cfg.meilisearch.url = Some(u);
    }
    if let Some(k) = args.meilisearch_key_file {
        cfg.meilisearch.api_key_file = Some(k);
    }
    kiln::pki::api::ApiTlsConfig::apply_flags(&mut cfg.api_tls, args.tls_cert, args.tls_key, args.tls_client_ca);
    let node = kiln::start_node(cfg).map_err(|e| e.to_string())?;
    println!("Kiln listening on {}", node.base_url());
    node.wait();
    Ok(())
}

/// Sets up the log: `--log-format`, else the served config's `[log] format`, else text.
/// The returned guard flushes the last lines when dropped (at the end of `main`).
fn init_logging(cli: &Cli) -> tracing_appender::non_blocking::WorkerGuard {
    use kiln::config::LogFormat;
    use std::io::IsTerminal;
    let format = cli.log_format.unwrap_or_else(|| match &cli.command {
        // An unreadable config is reported by `serve` itself.
        Command::Serve(ServeArgs { config: Some(path), .. }) => Config::from_file(path).map(|c| c.log.format).unwrap_or_default(),
        _ => LogFormat::Text,
    });
    // Logs go to stderr; stdout carries the "Kiln listening on" line that launchers read.
    // Log lines are written by a background thread, in batches (a buffered stderr flushed whenever
    // the queue drains), not by the HTTP workers. Not lossy: a full queue makes the logging thread
    // wait rather than drop lines. (The audit log has its own batching writer: auth::audit.)
    let (writer, flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("kiln-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
    flush_on_exit
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _flush_on_exit = init_logging(&cli);
    let result = match cli.command {
        Command::Import(args) => match import(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Backup(args) => backup(args),
        Command::Restore(args) => restore(args),
        Command::Storage(args) => storage(args),
        Command::Compact(args) => compact(args),
        Command::Serve(args) => serve(args),
        Command::Cluster(cmd) => cluster(cmd),
        Command::Token(args) => token(args),
        Command::Reindex(args) => reindex(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}
