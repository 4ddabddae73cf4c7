//! The `kiln` command line: `kiln serve` runs one node from a config file and flags; `kiln cluster`
//! runs a local cluster and manages membership (see `kiln::launcher`); `kiln token` prints a
//! development JWT; `kiln import` / `kiln backup` / `kiln restore` move data in and out
//! (`kiln::dataio`).

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
struct CompactArgs {
    /// The node's data folder (the node must be stopped).
    #[arg(long)]
    data_dir: PathBuf,
    /// The node's config file, for its `[storage]` settings (default: the defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn compact(args: CompactArgs) -> Result<(), String> {
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
struct StorageArgs {
    /// The node's data folder (the node must be stopped).
    #[arg(long)]
    data_dir: PathBuf,
}

fn storage(args: StorageArgs) -> Result<(), String> {
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
struct ImportArgs {
    /// FILE.ndjson, a folder of *.ndjson files, or - (stdin).
    input: PathBuf,
    /// FHIR base URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    node: String,
    /// File with a bearer token (JWT or API key) when the cluster has auth on.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for an https:// node with a private CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Resume file (default: FILE.kiln-import, DIR/.kiln-import; none for stdin).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Ignore the resume file and import everything again.
    #[arg(long)]
    restart: bool,
    /// Lines per Bundle.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Bytes of lines per Bundle (at most; a Bundle is at least one line).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    batch_bytes: usize,
    /// Bundles in flight (1 keeps the file's order between bundles).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

fn import(args: ImportArgs) -> Result<ExitCode, String> {
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
struct BackupArgs {
    /// The operator API (admin_listen) of the node to copy.
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    node: String,
    /// Folder for state.kbak and manifest.json (must not hold a backup yet).
    #[arg(long)]
    out: PathBuf,
    /// File with the operator API token, when one is set.
    #[arg(long, alias = "token-file")]
    admin_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for an https:// operator API.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Keep asking this long while the node is busy streaming a snapshot to a follower.
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
}

fn backup(args: BackupArgs) -> Result<(), String> {
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
struct RestoreArgs {
    /// A folder written by `kiln backup`.
    #[arg(long)]
    from: PathBuf,
    /// Node i's data goes to DATA_DIR/node<i> (the layout of `kiln cluster up --data-dir`).
    #[arg(long)]
    data_dir: PathBuf,
    /// Voters of the new cluster: ids 1..=N.
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// Explicit voter ids instead of 1..=N (comma-separated).
    #[arg(long, value_delimiter = ',')]
    node_ids: Vec<u64>,
}

fn restore(args: RestoreArgs) -> Result<(), String> {
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

#[derive(clap::Args)]
struct ReindexArgs {
    /// The operator API (admin_listen) of any node.
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    admin: String,
    /// File with the operator API token, when one is set.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Give up waiting after this many seconds (the rebuild goes on in the cluster).
    #[arg(long, default_value_t = 24 * 3600)]
    timeout_secs: u64,
    /// Only start the rebuild; do not wait for it.
    #[arg(long)]
    no_wait: bool,
}

fn reindex(args: ReindexArgs) -> Result<(), String> {
    let token = read_token(args.admin_token_file)?;
    let base = args.admin.trim_end_matches('/').to_string();
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(120)).build().map_err(|e| e.to_string())?;
    let with_token = |r: reqwest::blocking::RequestBuilder| match &token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let resp = with_token(client.post(format!("{base}/_cluster/meilisearch/reindex"))).send().map_err(|e| format!("{base}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().map_err(|e| format!("{base}: {e}"))?;
    if !status.is_success() {
        let why = body.pointer("/issue/0/diagnostics").and_then(|d| d.as_str()).map(String::from).unwrap_or_else(|| body.to_string());
        return Err(format!("reindex refused ({status}): {why}"));
    }
    if args.no_wait {
        println!("reindex started; progress: the meilisearch object of {base}/_cluster/status");
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} history rows indexed ({per_sec}) {msg}")
            .map_err(|e| e.to_string())?,
    );
    let started = std::time::Instant::now();
    let mut total = 0u64;
    loop {
        let st: serde_json::Value = with_token(client.get(format!("{base}/_cluster/status")))
            .send()
            .and_then(|r| r.json())
            .map_err(|e| format!("{base}/_cluster/status: {e}"))?;
        let m = &st["meilisearch"];
        let lag = m["lag_rows"].as_u64().unwrap_or(0);
        total = total.max(lag);
        bar.set_length(total);
        bar.set_position(total - lag);
        bar.set_message(m["last_error"].as_str().map(|e| format!("(retrying: {e})")).unwrap_or_default());
        if lag == 0 {
            bar.finish_with_message("done: Meilisearch holds every resource");
            return Ok(());
        }
        if started.elapsed().as_secs() > args.timeout_secs {
            bar.abandon_with_message("still running in the cluster");
            return Err(format!("gave up waiting after {} s; {lag} history rows left", args.timeout_secs));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[derive(clap::Args)]
struct TokenArgs {
    /// File holding the HS256 secret (the node's hs256_secret_file).
    #[arg(long)]
    secret_file: PathBuf,
    /// The subject (`sub`).
    #[arg(long)]
    sub: String,
    /// Groups, comma-separated (in the groups claim, default cognito:groups).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// SMART scopes, space-separated, e.g. "patient/Observation.rs user/*.read".
    #[arg(long)]
    scope: Option<String>,
    /// Tenant (in the tenant claim, default custom:tenantId).
    #[arg(long)]
    tenant: Option<String>,
    /// The patient launch context (`patient` claim) for patient/ scopes.
    #[arg(long)]
    patient: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// A node config whose [auth] names the claims (groups_claim, tenant_claim) and iss/aud.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    audience: Option<String>,
}

fn token(args: TokenArgs) -> Result<(), String> {
    let auth = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?.auth,
        None => kiln::auth::AuthConfig::default(),
    };
    let spec = kiln::auth::token::TokenSpec {
        sub: args.sub,
        groups: args.groups.into_iter().filter(|g| !g.is_empty()).collect(),
        scope: args.scope,
        tenant: args.tenant,
        patient: args.patient,
        ttl_secs: args.ttl,
        issuer: args.issuer,
        audience: args.audience,
    };
    println!("{}", kiln::auth::token::mint(&args.secret_file, &spec, &auth).map_err(|e| e.to_string())?);
    Ok(())
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start N nodes on this machine (HTTP on base-port.., Raft on raft-base-port..).
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Configs (nodeN.toml) and data (nodeN/) go here.
        #[arg(long, default_value = "data/cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 8080)]
        base_port: u16,
        /// Default: base-port + 1000.
        #[arg(long)]
        raft_base_port: Option<u16>,
        /// Operator API (membership, digest) on loopback. Default: base-port + 100.
        #[arg(long)]
        admin_base_port: Option<u16>,
        #[arg(long, value_parser = parse_version, default_value = "4.0.1")]
        fhir_version: FhirVersion,
        /// Mutual TLS between the nodes (certificates generated into DATA_DIR/certs).
        #[arg(long)]
        tls: bool,
    },
    /// Add a node (started with cluster.join = true) as learner, wait for it to catch up, then
    /// make it a voter.
    AddNode {
        /// Any node of the running cluster: its FHIR URL, or its operator API (with the token).
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        id: u64,
        /// The new node's Raft address (host:port).
        #[arg(long)]
        raft_addr: String,
        /// The new node's FHIR base URL.
        #[arg(long, default_value = "")]
        http_url: String,
        /// The new node's operator API URL (its admin_listen).
        #[arg(long, default_value = "")]
        admin_url: String,
        /// File with the operator API token (the leader's admin_token_file), when one is set.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Leave it a learner (replica that does not vote).
        #[arg(long)]
        learner: bool,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Remove a node from the cluster's configuration.
    RemoveNode {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        id: u64,
        /// File with the operator API token, when one is set.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
    },
    /// Print /_cluster/status of a node (its FHIR URL, or its operator API with the token).
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        node: String,
        /// File with the operator API token, when one is set.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
    },
    /// Write a CA and node certificates (PEM) for cluster.tls. A CA already in OUT (ca.key) is
    /// reused, so `--node 4` adds node 4's certificate to an existing cluster.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Certificates for nodes 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Only these node ids (repeatable), instead of 1..=N.
        #[arg(long = "node")]
        only: Vec<u64>,
        /// Host names / IPs the node certificates are valid for (repeatable).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
    },
}

fn cluster(cmd: ClusterCommand) -> Result<(), String> {
    use kiln::launcher;
    let e = |e: launcher::LauncherError| e.to_string();
    let print = |v: serde_json::Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match cmd {
        ClusterCommand::Up { nodes, data_dir, base_port, raft_base_port, admin_base_port, fhir_version, tls } => {
            if nodes == 0 {
                return Err("--nodes must be at least 1".into());
            }
            let raft_base_port = raft_base_port.unwrap_or(base_port.saturating_add(1000));
            let admin_base_port = admin_base_port.unwrap_or(base_port.saturating_add(100));
            let lc = launcher::LocalCluster { nodes, data_dir, base_port, raft_base_port, admin_base_port, fhir_version, tls };
            launcher::up(&lc).map_err(e)
        }
        ClusterCommand::AddNode { cluster, id, raft_addr, http_url, admin_url, admin_token_file, learner, timeout_secs } => {
            let token = read_token(admin_token_file)?;
            let peer = kiln::config::PeerConfig { id, raft_addr, http_url, admin_url };
            print(launcher::add_node(&cluster, &peer, learner, std::time::Duration::from_secs(timeout_secs), token.as_deref()).map_err(e)?);
            Ok(())
        }
        ClusterCommand::RemoveNode { cluster, id, admin_token_file } => {
            let token = read_token(admin_token_file)?;
            print(launcher::remove_node(&cluster, id, token.as_deref()).map_err(e)?);
            Ok(())
        }
        ClusterCommand::Status { node, admin_token_file } => {
            let token = read_token(admin_token_file)?;
            print(launcher::status(&node, token.as_deref()).map_err(e)?);
            Ok(())
        }
        ClusterCommand::Certs { out, nodes, only, hosts } => {
            let ids: Vec<u64> = if only.is_empty() { (1..=nodes).collect() } else { only };
            launcher::write_certs(&out, &ids, &hosts).map_err(e)?;
            let list: Vec<String> = ids.iter().map(|i| format!("node{i}")).collect();
            println!("wrote ca.pem and {} .pem/.key to {}", list.join(", "), out.display());
            Ok(())
        }
    }
}

fn read_token(path: Option<PathBuf>) -> Result<Option<String>, String> {
    path.map(|p| std::fs::read_to_string(&p).map(|t| t.trim().to_string()).map_err(|e| format!("cannot read {}: {e}", p.display())))
        .transpose()
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
