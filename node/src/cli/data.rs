//! The data commands of `kiln`: offline compaction and storage usage of a node's folder, and
//! import, backup and restore through a running cluster's HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use kiln::Config;

#[derive(clap::Args)]
pub(crate) struct CompactArgs {
    /// The node's data folder (the node must be stopped).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// The node's config file, for its `[storage]` settings (default: the defaults).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

pub(crate) fn compact(args: CompactArgs) -> Result<(), String> {
    let storage = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?.storage,
        None => kiln::store::db::StorageConfig::default(),
    };
    storage.check()?;
    let started = std::time::Instant::now();
    let done = kiln::machine::compact::compact(&args.data_dir, &storage).map_err(|e| e.to_string())?;
    println!(
        "compacted {} keys in {:.1} s: {:.1} MB -> {:.1} MB
the old database is in {} (remove it once the node runs)",
        done.keys,
        started.elapsed().as_secs_f64(),
        done.bytes_before as f64 / 1e6,
        done.bytes_after as f64 / 1e6,
        done.kept.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct StorageArgs {
    /// The node's data folder (the node must be stopped).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
}

pub(crate) fn storage(args: StorageArgs) -> Result<(), String> {
    use kiln::machine::usage;
    use kiln::store::db;
    if db::written_compressed(&args.data_dir).is_none() {
        return Err(format!("{} is not a node's data folder (no sled `conf` file)", args.data_dir.display()));
    }
    let cfg = db::StorageConfig { cache_mib: 64, ..Default::default() };
    let d = db::open(&args.data_dir, &cfg).map_err(|e| format!("opening {}: {e}", args.data_dir.display()))?;
    let u = usage::measure(&d, &args.data_dir).map_err(|e| e.to_string())?;
    print!("{}", usage::render(&u));
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// FILE.ndjson, a folder of *.ndjson files, or - (stdin).
    pub(crate) input: PathBuf,
    /// FHIR base URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) node: String,
    /// File with a bearer token (JWT or API key) when the cluster has auth on.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for an https:// node with a private CA.
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Resume file (default: FILE.kiln-import, DIR/.kiln-import; none for stdin).
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
    /// Ignore the resume file and import everything again.
    #[arg(long)]
    pub(crate) restart: bool,
    /// Lines per Bundle.
    #[arg(long, default_value_t = 500)]
    pub(crate) batch: usize,
    /// Bytes of lines per Bundle (at most; a Bundle is at least one line).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub(crate) batch_bytes: usize,
    /// Bundles in flight (1 keeps the file's order between bundles).
    #[arg(long, default_value_t = 2)]
    pub(crate) concurrency: usize,
}

pub(crate) fn import(args: ImportArgs) -> Result<ExitCode, String> {
    use kiln::dataio::{client::Conn, import};
    let conn = Conn::load(args.token_file.as_deref(), args.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let job = import::ImportJob {
        node: args.node,
        input: args.input,
        conn,
        state: args.state,
        restart: args.restart,
        batch: args.batch,
        batch_bytes: args.batch_bytes,
        concurrency: args.concurrency,
    };
    let r = import::run(&job).map_err(|e| format!("import stopped: {e} (rerun the same command to resume)"))?;
    println!(
        "imported {} resources in {:.1} s ({:.0} resources/s); {} lines rejected by this run; {} lines skipped (settled by an earlier run)",
        r.imported,
        r.secs,
        r.per_sec(),
        r.rejected_now,
        r.skipped_lines
    );
    if let Some(p) = &r.state_file {
        println!("progress recorded in {}", p.display());
    }
    if r.rejected_total == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} rejected lines (this run and earlier ones):", r.rejected_total);
    for (file, line, reason) in r.rejects.iter().take(100) {
        println!("  {file}:{line}: {reason}");
    }
    if r.rejected_total > 100 {
        println!("  ... {} more (the state file keeps the first {} per file)", r.rejected_total - 100, kiln::dataio::import::state::MAX_KEPT);
    }
    Ok(ExitCode::from(2))
}

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// The operator API (admin_listen) of the node to copy.
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    pub(crate) node: String,
    /// Folder for state.kbak and manifest.json (must not hold a backup yet).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// File with the operator API token, when one is set.
    #[arg(long, alias = "token-file")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for an https:// operator API.
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Keep asking this long while the node is busy streaming a snapshot to a follower.
    #[arg(long, default_value_t = 300)]
    pub(crate) wait_secs: u64,
}

pub(crate) fn backup(args: BackupArgs) -> Result<(), String> {
    use kiln::dataio::{backup, client::Conn};
    let conn = Conn::load(args.admin_token_file.as_deref(), args.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let job = backup::BackupJob { node: args.node, out: args.out, conn, wait: std::time::Duration::from_secs(args.wait_secs) };
    let done = backup::run(&job).map_err(|e| e.to_string())?;
    let m = &done.manifest;
    println!(
        "backup of node {} at index {} (term {}): {} bytes, {} pairs, in {:.1} s ({:.1} MB/s)\nsha256 {}\ndata_sha256 {}\nwritten to {}",
        m.node_id,
        m.index,
        m.term,
        m.bytes,
        m.pairs,
        done.secs,
        done.mb_per_sec(),
        m.sha256,
        m.data_sha256,
        job.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// A folder written by `kiln backup`.
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// Node i's data goes to DATA_DIR/node<i> (the layout of `kiln cluster up --data-dir`).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Voters of the new cluster: ids 1..=N.
    #[arg(long, default_value_t = 1)]
    pub(crate) nodes: u64,
    /// Explicit voter ids instead of 1..=N (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) node_ids: Vec<u64>,
}

pub(crate) fn restore(args: RestoreArgs) -> Result<(), String> {
    use kiln::dataio::restore;
    let node_ids = if args.node_ids.is_empty() { (1..=args.nodes).collect() } else { args.node_ids };
    let job = restore::RestoreJob { from: args.from, data_dir: args.data_dir, node_ids };
    let m = restore::run(&job).map_err(|e| e.to_string())?;
    let dirs: Vec<String> = job.node_ids.iter().map(|i| restore::node_dir(&job.data_dir, *i).display().to_string()).collect();
    println!(
        "restored index {} (term {}, {} pairs, data_sha256 {}) into {}\nvoters: {:?}; start them with the same node ids (kiln cluster up --nodes {} --data-dir {})",
        m.index,
        m.term,
        m.pairs,
        m.data_sha256,
        dirs.join(", "),
        job.node_ids,
        job.node_ids.len(),
        job.data_dir.display()
    );
    Ok(())
}
