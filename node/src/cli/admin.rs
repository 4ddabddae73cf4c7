//! The operator commands of `kiln`: Meilisearch reindex, minting a token, and the local cluster
//! (up, membership, certificates).

use std::path::PathBuf;
use clap::Subcommand;
use kiln::fhir::FhirVersion;
use kiln::Config;

#[derive(clap::Args)]
pub(crate) struct ReindexArgs {
    /// The operator API (admin_listen) of any node.
    #[arg(long, default_value = "http://127.0.0.1:8180")]
    pub(crate) admin: String,
    /// File with the operator API token, when one is set.
    #[arg(long)]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Give up waiting after this many seconds (the rebuild goes on in the cluster).
    #[arg(long, default_value_t = 24 * 3600)]
    pub(crate) timeout_secs: u64,
    /// Only start the rebuild; do not wait for it.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

pub(crate) fn reindex(args: ReindexArgs) -> Result<(), String> {
    let conn = kiln::dataio::client::Conn::load(args.admin_token_file.as_deref(), None).map_err(|e| e.to_string())?;
    let base = args.admin.trim_end_matches('/').to_string();
    let client = conn.client(Some(std::time::Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let with_token = |r: reqwest::blocking::RequestBuilder| conn.auth(r);
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
pub(crate) struct TokenArgs {
    /// File holding the HS256 secret (the node's hs256_secret_file).
    #[arg(long)]
    pub(crate) secret_file: PathBuf,
    /// The subject (`sub`).
    #[arg(long)]
    pub(crate) sub: String,
    /// Groups, comma-separated (in the groups claim, default cognito:groups).
    #[arg(long, value_delimiter = ',')]
    pub(crate) groups: Vec<String>,
    /// SMART scopes, space-separated, e.g. "patient/Observation.rs user/*.read".
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// Tenant (in the tenant claim, default custom:tenantId).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// The patient launch context (`patient` claim) for patient/ scopes.
    #[arg(long)]
    pub(crate) patient: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) ttl: u64,
    /// A node config whose [auth] names the claims (groups_claim, tenant_claim) and iss/aud.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// `iss` claim.
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    pub(crate) audience: Option<String>,
}

pub(crate) fn token(args: TokenArgs) -> Result<(), String> {
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
pub(crate) enum ClusterCommand {
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
        #[arg(long, value_parser = crate::parse_version, default_value = "4.0.1")]
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

pub(crate) fn cluster(cmd: ClusterCommand) -> Result<(), String> {
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

pub(crate) fn read_token(path: Option<PathBuf>) -> Result<Option<String>, String> {
    path.map(|p| std::fs::read_to_string(&p).map(|t| t.trim().to_string()).map_err(|e| format!("cannot read {}: {e}", p.display())))
        .transpose()
}
