//! The Kubernetes manifests (cluster-config/k8s/): they pass `kubernetes-validate --strict`, and
//! the node config in their ConfigMap forms a real 3-node cluster with the node ids taken from
//! StatefulSet-style host names, then scales out: a 4th pod (`kiln-3`) starts as a joiner on its
//! own and `kiln cluster add-node` makes it a voter.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::Config;
use kiln_tests::{client, free_ports, json, kiln_bin, put, ChildNode};
use serde_json::json;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/k8s")
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate runs (.ci/run installs it: pip install kubernetes-validate)")
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["configmap.yaml", "networkpolicy.yaml", "poddisruptionbudget.yaml", "services.yaml", "statefulset.yaml"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let out = validate(&files);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), 6, "every resource checked: {text}");
    // The validator does reject a broken manifest (a misspelt field under --strict).
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let sts = std::fs::read_to_string(k8s_dir().join("statefulset.yaml")).unwrap();
    std::fs::write(&broken, sts.replace("serviceName:", "serviceNmae:")).unwrap();
    assert!(!validate(&[broken]).status.success(), "a misspelt field fails validation");
}

/// The `kiln.toml` block of the ConfigMap.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(k8s_dir().join("configmap.yaml")).unwrap();
    let (_, block) = yaml.split_once("  kiln.toml: |\n").expect("kiln.toml key in the ConfigMap");
    block.lines().take_while(|l| l.is_empty() || l.starts_with("    ")).map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

/// Polls `/_cluster/status` on the operator API until `ok` holds (30 s at most).
fn status_until(admin: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = client().get(format!("{admin}/_cluster/status")).bearer_auth("k8s-test-admin-token").timeout(Duration::from_secs(2)).send().ok().and_then(|r| r.json().ok());
        if let Some(s) = s.filter(|s| ok(s)) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{admin}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn configmap_config_forms_a_cluster_from_pod_names_and_scales_out() {
    let text = configmap_toml();
    let shipped: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("the ConfigMap's kiln.toml parses: {e}\n{text}"));
    assert!(shipped.node_id_from_hostname);
    assert_eq!(shipped.cluster.initial_voters, vec![1, 2, 3]);
    assert_eq!(shipped.cluster.peers.len(), 5);

    // On one machine every pod needs its own ports and folders, so those (and the secrets'
    // paths) are rewritten; the node id, the join decision and the per-node TLS file names
    // come from the shipped config and the host name, as in a pod. The FHIR port is loopback
    // plain HTTP without auth here (the pods' [api_tls] and JWKS are the operator's secrets).
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("raft-tls");
    let out = Command::new(kiln_bin()).args(["cluster", "certs", "--out"]).arg(&certs).args(["--nodes", "5"]).output().unwrap();
    assert!(out.status.success(), "certs: {}", String::from_utf8_lossy(&out.stderr));
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "k8s-test-admin-token").unwrap();
    // Ports are picked free, then released: if another test takes one before a pod binds it,
    // the pods are stopped and the whole set is picked again (three tries).
    let configure = |ports: &[u16]| {
        let mut base = shipped.clone();
        for (i, p) in base.cluster.peers.iter_mut().enumerate() {
            p.raft_addr = format!("127.0.0.1:{}", ports[5 + i]);
            p.http_url = format!("http://127.0.0.1:{}", ports[i]);
            p.admin_url = format!("http://127.0.0.1:{}", ports[10 + i]);
        }
        let tls = base.cluster.tls.as_mut().expect("the ConfigMap sets [cluster.tls]");
        let rehome = |p: &Path| certs.join(p.file_name().unwrap());
        (tls.cert, tls.key, tls.ca) = (rehome(&tls.cert), rehome(&tls.key), rehome(&tls.ca));
        assert!(tls.cert.to_string_lossy().ends_with("node{node_id}.pem"), "{:?}", tls.cert);
        base.admin_token_file = Some(token.clone());
        base.api_tls = None;
        base.auth = kiln::auth::AuthConfig::default();
        base.raft.tick_ms = 50;
        base
    };
    let try_pod = |base: &Config, ports: &[u16], ordinal: usize| -> Result<ChildNode, String> {
        let mut cfg = base.clone();
        cfg.data_dir = dir.path().join(format!("kiln-{ordinal}"));
        cfg.listen = format!("127.0.0.1:{}", ports[ordinal]);
        cfg.admin_listen = Some(format!("127.0.0.1:{}", ports[10 + ordinal]));
        cfg.cluster.raft_listen = Some(format!("127.0.0.1:{}", ports[5 + ordinal]));
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
        let path = dir.path().join(format!("kiln-{ordinal}.toml"));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let host = format!("kiln-{ordinal}");
        ChildNode::try_start_config_env(&path, &cfg.data_dir, [("HOSTNAME", host.as_str())])
    };
    let (ports, base, _pods) = (1..=3)
        .find_map(|attempt| {
            let ports = free_ports(15);
            let base = configure(&ports);
            match (0..3).map(|o| try_pod(&base, &ports, o)).collect::<Result<Vec<ChildNode>, String>>() {
                Ok(pods) => Some((ports, base, pods)),
                Err(e) if attempt < 3 => {
                    eprintln!("attempt {attempt}: {e}; other ports");
                    None
                }
                Err(e) => panic!("three attempts: {e}"),
            }
        })
        .unwrap();
    let start_pod = |ordinal: usize| try_pod(&base, &ports, ordinal).unwrap_or_else(|e| panic!("{e}"));
    let admin = |ordinal: usize| format!("http://127.0.0.1:{}", ports[10 + ordinal]);
    let fhir = |ordinal: usize| format!("http://127.0.0.1:{}", ports[ordinal]);

    for ordinal in 0..3 {
        let s = status_until(&admin(ordinal), "a leader among the three", |s| s["leader_id"].as_u64().unwrap_or(0) != 0);
        assert_eq!(s["id"].as_u64(), Some(ordinal as u64 + 1), "pod kiln-{ordinal} is node {}: {s}", ordinal + 1);
        assert_eq!(s["voters"].as_array().map(|v| v.len()), Some(3), "{s}");
    }
    let (code, _) = put(&client(), &format!("{}/Patient/k8s", fhir(0)), &json!({"resourceType": "Patient", "id": "k8s"})).unwrap();
    assert_eq!(code, 201);

    // Scale the StatefulSet to 4: kiln-3 (node 4) is not an initial voter, so it waits to be added.
    let _fourth = start_pod(3);
    let s = status_until(&admin(3), "node 4 answers", |s| s["id"].as_u64() == Some(4));
    assert_eq!(s["voters"], json!([]), "a joiner starts with no configuration, it does not bootstrap: {s}");
    let out = Command::new(kiln_bin())
        .args(["cluster", "add-node", "--cluster", &admin(1), "--id", "4", "--raft-addr", &base.cluster.peers[3].raft_addr])
        .args(["--http-url", &fhir(3), "--admin-url", &admin(3), "--admin-token-file"])
        .arg(base.admin_token_file.as_ref().unwrap())
        .args(["--timeout-secs", "60"])
        .output()
        .unwrap();
    assert!(out.status.success(), "add-node: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let status = |token: bool| {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["cluster", "status", "--node", &admin(2)]);
        if token {
            cmd.arg("--admin-token-file").arg(base.admin_token_file.as_ref().unwrap());
        }
        cmd.output().unwrap()
    };
    let (with, without) = (status(true), status(false));
    assert!(with.status.success() && String::from_utf8_lossy(&with.stdout).contains("\"leader_id\""), "{with:?}");
    assert!(!without.status.success() && String::from_utf8_lossy(&without.stderr).contains("401"), "{without:?}");
    status_until(&admin(0), "node 4 is a voter", |s| s["voters"].as_array().is_some_and(|v| v.len() == 4));
    let start = Instant::now();
    loop {
        let r = client().get(format!("{}/Patient/k8s", fhir(3))).send().unwrap();
        if r.status() == 200 {
            assert_eq!(json(r)["id"], "k8s");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "node 4 serves the cluster's data");
        std::thread::sleep(Duration::from_millis(100));
    }
}
