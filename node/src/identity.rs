//! Which node this process is, when one config serves every node: with `node_id_from_hostname`
//! the node id comes from the host name's ordinal, as a Kubernetes StatefulSet names its pods
//! (`kiln-0`, `kiln-1`, …; node id = ordinal + 1, since Raft ids are non-zero). A node whose id is
//! not in `cluster.initial_voters` starts as a joiner (`cluster.join`), waiting for
//! `kiln cluster add-node`: scaling the StatefulSet out never bootstraps a second cluster.
//! `{node_id}` in the `[cluster.tls]` `cert` and `key` paths becomes the id, so one mounted
//! secret holding every node's certificate serves all pods.
//! See cluster-config/k8s/ and docs/operations.md ("Kubernetes").

use crate::config::Config;

/// Largest ordinal accepted (a StatefulSet of more than this many Raft members is a mistake).
const MAX_ORDINAL: u64 = 9_999;

/// Errors deriving a node's identity from its host name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("host name {0:?} does not end in -<ordinal> (e.g. kiln-0): node_id_from_hostname needs a StatefulSet-style name")]
    NoOrdinal(String),
    #[error("host name {0:?}: ordinal above {MAX_ORDINAL}")]
    OrdinalTooLarge(String),
    #[error("cannot read the host name: {0}")]
    Hostname(String),
    #[error("node_id_from_hostname and an explicit --node-id both set: choose one")]
    Conflict,
}

/// The node id for a host name: `NAME-<ordinal>` (first DNS label) → ordinal + 1.
pub fn node_id_for_host(host: &str) -> Result<u64, IdentityError> {
    let label = host.split('.').next().unwrap_or_default();
    let (name, ordinal) = label.rsplit_once('-').ok_or_else(|| IdentityError::NoOrdinal(host.to_string()))?;
    if name.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentityError::NoOrdinal(host.to_string()));
    }
    if ordinal.len() > 4 {
        return Err(IdentityError::OrdinalTooLarge(host.to_string()));
    }
    let n: u64 = ordinal.parse().map_err(|_| IdentityError::NoOrdinal(host.to_string()))?;
    if n > MAX_ORDINAL {
        return Err(IdentityError::OrdinalTooLarge(host.to_string()));
    }
    Ok(n + 1)
}

/// This machine's host name: `HOSTNAME` when set (Kubernetes sets it to the pod name), else the
/// kernel's.
pub fn hostname() -> Result<String, IdentityError> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.trim().is_empty() {
            return Ok(h.trim().to_string());
        }
    }
    let h = nix::unistd::gethostname().map_err(|e| IdentityError::Hostname(e.to_string()))?;
    h.into_string().map_err(|h| IdentityError::Hostname(format!("{h:?} is not UTF-8")))
}

/// Resolves `cfg.node_id` from `host` when `node_id_from_hostname` is set (`explicit_id`: a
/// `--node-id` flag, which conflicts), and makes a node outside `cluster.initial_voters` a joiner.
pub fn resolve(cfg: &mut Config, host: impl FnOnce() -> Result<String, IdentityError>, explicit_id: bool) -> Result<(), IdentityError> {
    if cfg.node_id_from_hostname {
        if explicit_id {
            return Err(IdentityError::Conflict);
        }
        cfg.node_id = node_id_for_host(&host()?)?;
    }
    if let Some(tls) = cfg.cluster.tls.as_mut() {
        let id = cfg.node_id.to_string();
        for path in [&mut tls.cert, &mut tls.key] {
            if let Some(text) = path.to_str().filter(|t| t.contains("{node_id}")) {
                *path = text.replace("{node_id}", &id).into();
            }
        }
    }
    let voters = &cfg.cluster.initial_voters;
    if !voters.is_empty() && !voters.contains(&cfg.node_id) && !cfg.cluster.peers.is_empty() {
        cfg.cluster.join = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    #[test]
    fn ordinals_map_to_ids() {
        assert_eq!(node_id_for_host("kiln-0"), Ok(1));
        assert_eq!(node_id_for_host("kiln-2"), Ok(3));
        assert_eq!(node_id_for_host("kiln-2.kiln-raft.fhir.svc.cluster.local"), Ok(3));
        assert_eq!(node_id_for_host("my-fhir-store-12"), Ok(13));
        assert_eq!(node_id_for_host("kiln-9999"), Ok(10_000));
        for bad in ["kiln", "kiln-", "-3", "kiln-a", "kiln-1x", "kiln-+1", "", "kiln.0", "kiln-0x1"] {
            assert!(matches!(node_id_for_host(bad), Err(IdentityError::NoOrdinal(_))), "{bad:?}");
        }
        assert!(matches!(node_id_for_host("kiln-10000"), Err(IdentityError::OrdinalTooLarge(_))));
        assert!(matches!(node_id_for_host("kiln-99999999999999999999999"), Err(IdentityError::OrdinalTooLarge(_))));
    }

    fn three_peers_of_five() -> Config {
        let mut cfg = Config { node_id_from_hostname: true, ..Config::default() };
        cfg.cluster.peers = (1..=5).map(|id| PeerConfig { id, raft_addr: format!("kiln-{}.kiln-raft:9080", id - 1), http_url: String::new(), admin_url: String::new() }).collect();
        cfg.cluster.initial_voters = vec![1, 2, 3];
        cfg.cluster.tls = Some(crate::config::TlsConfig { cert: "/tls/node{node_id}.pem".into(), key: "/tls/node{node_id}.key".into(), ca: "/tls/ca.pem".into() });
        cfg
    }

    #[test]
    fn initial_voters_bootstrap_and_later_ordinals_join() {
        for (host, id, join) in [("kiln-0", 1, false), ("kiln-2", 3, false), ("kiln-3", 4, true), ("kiln-4", 5, true)] {
            let mut cfg = three_peers_of_five();
            resolve(&mut cfg, || Ok(host.to_string()), false).unwrap();
            assert_eq!((cfg.node_id, cfg.cluster.join), (id, join), "{host}");
            let voters = cfg.cluster.initial_voters(cfg.node_id);
            assert_eq!(voters, if join { vec![] } else { vec![1, 2, 3] }, "{host}");
            let tls = cfg.cluster.tls.as_ref().unwrap();
            assert_eq!((tls.cert.to_str().unwrap(), tls.key.to_str().unwrap()), (&*format!("/tls/node{id}.pem"), &*format!("/tls/node{id}.key")));
            assert_eq!(tls.ca.to_str(), Some("/tls/ca.pem"));
        }
    }

    #[test]
    fn explicit_ids_and_errors() {
        let mut cfg = three_peers_of_five();
        assert_eq!(resolve(&mut cfg, || Ok("kiln-0".into()), true), Err(IdentityError::Conflict));
        let mut cfg = three_peers_of_five();
        assert!(matches!(resolve(&mut cfg, || Ok("fhir".into()), false), Err(IdentityError::NoOrdinal(_))));
        let mut cfg = three_peers_of_five();
        assert!(matches!(resolve(&mut cfg, || Err(IdentityError::Hostname("x".into())), false), Err(IdentityError::Hostname(_))));
        // Without the option the host name is never read and the configured id stands.
        let mut cfg = Config { node_id: 7, ..Config::default() };
        resolve(&mut cfg, || panic!("not consulted"), false).unwrap();
        assert_eq!((cfg.node_id, cfg.cluster.join), (7, false));
    }
}
