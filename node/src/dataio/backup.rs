//! `kiln backup --node ADMIN_URL --out DIR`: streams `GET /_cluster/backup` into
//! `DIR/state.kbak` while checking it ([`super::format::Reader`]: lengths, order, pair count,
//! data and file digests), then writes `DIR/manifest.json` ([`Manifest`]). Nothing is trusted
//! before the trailer verified: the file is written as `state.kbak.partial` and renamed only
//! after. Memory is bounded by one pair, whatever the state's size.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::{outcome_text, retry_after, Conn};
use super::format::Reader;
use super::DataIoError;

/// The state file inside a backup folder.
pub const STATE_FILE: &str = "state.kbak";
/// The manifest inside a backup folder.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT: &str = "kiln-backup/1";

/// `DIR/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The state file's name in the folder.
    pub file: String,
    /// Applied index and term the state reflects.
    pub index: u64,
    pub term: u64,
    pub fhir_version: String,
    /// The node that streamed it.
    pub node_id: u64,
    /// When the capture started (RFC 3339).
    pub created: String,
    /// SHA-256 (hex) and size of the state file.
    pub sha256: String,
    pub bytes: u64,
    /// Key/value pairs of the state, and their data digest (`data_sha256` of `/_cluster/digest`
    /// on a cluster restored from it).
    pub pairs: u64,
    pub data_sha256: String,
    /// The `kiln` version that wrote the manifest.
    pub kiln_version: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, DataIoError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&path).map_err(DataIoError::io(&path))?;
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| DataIoError::Refused(format!("{}: {e}", path.display())))?;
        if m.format != MANIFEST_FORMAT {
            return Err(DataIoError::Refused(format!("{}: format '{}' (this kiln reads {MANIFEST_FORMAT})", path.display(), m.format)));
        }
        if m.file.contains('/') || m.file.contains('\\') || m.file.starts_with('.') {
            return Err(DataIoError::Refused(format!("{}: file '{}' is not a plain file name", path.display(), m.file)));
        }
        Ok(m)
    }
}

/// What `kiln backup` was asked.
pub struct BackupJob {
    /// The operator API of the node to copy.
    pub node: String,
    pub out: PathBuf,
    pub conn: Conn,
    /// How long to keep asking while the node is busy (a snapshot transfer holds its capture).
    pub wait: Duration,
}

/// What a finished backup holds, and how fast it came.
pub struct Done {
    pub manifest: Manifest,
    pub secs: f64,
}

impl Done {
    pub fn mb_per_sec(&self) -> f64 {
        self.manifest.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// Copies the node's bytes to the file, counting them.
struct Tee<R, W> {
    src: R,
    out: W,
    bar: indicatif::ProgressBar,
    io_error: Option<std::io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.src.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.io_error = Some(e);
            return Err(std::io::Error::new(kind, "writing the backup file failed"));
        }
        self.bar.inc(n as u64);
        Ok(n)
    }
}

pub fn run(job: &BackupJob) -> Result<Done, DataIoError> {
    std::fs::create_dir_all(&job.out).map_err(DataIoError::io(&job.out))?;
    if job.out.join(MANIFEST_FILE).exists() || job.out.join(STATE_FILE).exists() {
        return Err(DataIoError::Usage(format!("{} already holds a backup; choose an empty folder", job.out.display())));
    }
    let base = job.node.trim_end_matches('/');
    let url = format!("{base}/_cluster/backup");
    let client = job.conn.client(None)?;
    let started = Instant::now();
    let resp = loop {
        let resp = job.conn.auth(client.get(&url)).send().map_err(|e| DataIoError::Http { url: url.clone(), reason: e.to_string() })?;
        let status = resp.status().as_u16();
        if status == 200 {
            break resp;
        }
        let wait = retry_after(&resp);
        let why = outcome_text(&resp.bytes().unwrap_or_default());
        if status != 503 || started.elapsed() + wait > job.wait {
            return Err(DataIoError::Http { url, reason: format!("HTTP {status}: {why}") });
        }
        eprintln!("kiln backup: node busy ({why}); retrying in {} s", wait.as_secs());
        std::thread::sleep(wait);
    };
    let header_index = resp.headers().get("x-kiln-backup-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let partial = job.out.join(format!("{STATE_FILE}.partial"));
    let file = File::create(&partial).map_err(DataIoError::io(&partial))?;
    let bar = super::import::bar(None, "{spinner} [{elapsed_precise}] {bytes} ({bytes_per_sec}) backup");
    let started = Instant::now();
    let mut tee = Tee { src: resp, out: BufWriter::with_capacity(1 << 20, file), bar: bar.clone(), io_error: None };
    let checked = Reader::open(&mut tee).and_then(|(header, r)| Ok((header, r.verify_all()?)));
    if let Some(e) = tee.io_error.take() {
        let _ = std::fs::remove_file(&partial);
        return Err(DataIoError::Io { path: partial.display().to_string(), source: e });
    }
    let (header, summary) = match checked {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(DataIoError::Refused(format!("the stream from {url} is not a complete backup: {e}")));
        }
    };
    if header_index.is_some_and(|i| i != header.index) {
        let _ = std::fs::remove_file(&partial);
        return Err(DataIoError::Refused(format!("the stream says index {} but its response header {header_index:?}", header.index)));
    }
    let file = tee.out.into_inner().map_err(|e| DataIoError::Io { path: partial.display().to_string(), source: e.into_error() })?;
    file.sync_all().map_err(DataIoError::io(&partial))?;
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let state = job.out.join(STATE_FILE);
    std::fs::rename(&partial, &state).map_err(DataIoError::io(&state))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        file: STATE_FILE.into(),
        index: header.index,
        term: header.term,
        fhir_version: header.fhir_version,
        node_id: header.node_id,
        created: header.created,
        sha256: summary.file_sha256,
        bytes: summary.bytes,
        pairs: summary.pairs,
        data_sha256: summary.data_sha256,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_atomically(&job.out.join(MANIFEST_FILE), &serde_json::to_vec_pretty(&manifest).unwrap_or_default())?;
    Ok(Done { manifest, secs })
}

/// Writes `path` through a temporary file and a rename (never a half-written file), synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataIoError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(DataIoError::io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(DataIoError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(DataIoError::io(path))?;
    Ok(())
}
