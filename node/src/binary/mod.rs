//! FHIR Binary content kept outside the Raft log.
//!
//! Small content stays inline (`Binary.data`, STU3 `Binary.content`) and is replicated like any
//! resource. Content above `[binary] inline_max_bytes` (or all content with `store = "s3"`) is
//! streamed to object storage, and the replicated Binary only points at it, with an extension on
//! the content element (a primitive extension, since Binary has no `extension` of its own):
//!
//! ```json
//! "_data": { "extension": [{ "url": "http://kiln.dev/fhir/StructureDefinition/binary-content",
//!   "extension": [{ "url": "store", "valueCode": "s3" }, { "url": "key", "valueString": "binary/…" },
//!                 { "url": "size", "valueInteger": 5242880 }, { "url": "sha256", "valueString": "…" }] }] }
//! ```
//!
//! Every write gets a fresh key (a UUID), so no write ever replaces bytes an older version points
//! to. A client cannot point a Binary at an object it did not upload: [`vet_json_write`] accepts
//! the extension in a client's JSON only when the current version of the same Binary already
//! carries it. Objects are reached only through Kiln (with the same read checks as the resource
//! version) or through presigned URLs Kiln minted for a caller allowed to read it
//! (`[s3] presign_expiry_secs` bounds them). The HTTP side is `crate::http::binary`.

pub mod content;

use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fhir::FhirVersion;
use crate::objects::{ObjectWriter, ObjectsError, S3};
use crate::store::Store;

pub use content::ContentRef;

/// URL of the extension that points a Binary at its content in object storage.
pub const CONTENT_EXT: &str = "http://kiln.dev/fhir/StructureDefinition/binary-content";

/// Where large content goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreChoice {
    /// Inline up to `inline_max_bytes`; above it `[s3]` when configured, else the node's local
    /// blob folder (single node only).
    #[default]
    Auto,
    /// Every raw upload goes to `[s3]`, whatever its size.
    S3,
}

/// `[binary]`: raw Binary content. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinaryConfig {
    /// Largest raw upload kept inline in the replicated resource (bytes).
    pub inline_max_bytes: usize,
    /// Largest raw upload accepted (bytes; at most 2147483647, FHIR's `integer`).
    pub max_bytes: u64,
    /// `auto` or `s3` (see [`StoreChoice`]).
    pub store: StoreChoice,
    /// Raw reads of content in `[s3]` answer `307` to a presigned GET URL instead of streaming.
    pub redirect_reads: bool,
    /// A FHIR JSON read of a Binary whose content is in object storage carries it as `data` when
    /// it is at most this large; larger content is left out (read it raw).
    pub json_data_max_bytes: u64,
}

impl Default for BinaryConfig {
    fn default() -> Self {
        BinaryConfig { inline_max_bytes: 256 * 1024, max_bytes: 1024 * 1024 * 1024, store: StoreChoice::Auto, redirect_reads: false, json_data_max_bytes: 4 * 1024 * 1024 }
    }
}

impl BinaryConfig {
    /// Checks the section against the rest of the configuration.
    pub fn validate(&self, has_s3: bool, max_frame_bytes: usize) -> Result<(), String> {
        if self.max_bytes == 0 || self.max_bytes > i32::MAX as u64 {
            return Err(format!("binary.max_bytes = {} must be between 1 and 2147483647", self.max_bytes));
        }
        // Inline content travels base64 (4/3) in a JSON body through the Raft log, one frame.
        if self.inline_max_bytes > max_frame_bytes / 4 {
            return Err(format!("binary.inline_max_bytes = {} must be at most a quarter of cluster.max_frame_bytes = {max_frame_bytes}", self.inline_max_bytes));
        }
        if !has_s3 && self.store == StoreChoice::S3 {
            return Err("binary.store = \"s3\" needs an [s3] section".into());
        }
        if !has_s3 && self.redirect_reads {
            return Err("binary.redirect_reads = true needs an [s3] section (it redirects to presigned S3 URLs)".into());
        }
        Ok(())
    }
}

/// Errors of Binary content handling (objects' own errors are [`ObjectsError`]).
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// A feature that needs `[s3]` on a node without it.
    #[error("{0} needs object storage: this node has no [s3] section (docs/operations.md, \"Object storage\")")]
    NeedsS3(String),
    #[error("the Binary content is larger than {limit} bytes, the largest this cluster keeps in the replicated log (binary.inline_max_bytes). Large Binary content in a cluster of several nodes needs [s3]: a file on one node would not survive the loss of that node")]
    ClusterNeedsS3 { limit: usize },
    #[error("the Binary content exceeds the limit of {limit} bytes (config binary.max_bytes)")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Forged(String),
    #[error("{0}")]
    NotPresignable(String),
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The content store failed (or has no such object).
    #[error(transparent)]
    Objects(#[from] ObjectsError),
}

/// The content stores of a node: the local blob folder and `[s3]` when configured.
pub struct Blobs {
    pub cfg: BinaryConfig,
    pub s3: Option<S3>,
    local: Arc<dyn ObjectStore>,
    /// The local blob folder (read directly: object_store's local reads go in 8 KiB chunks).
    local_dir: PathBuf,
    local_place: String,
    /// More than one node: local blobs would not be replicated.
    pub clustered: bool,
    pub version: FhirVersion,
}

/// Where one object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    S3,
    Local,
}

impl Place {
    pub fn code(self) -> &'static str {
        match self {
            Place::S3 => "s3",
            Place::Local => "local",
        }
    }
}

impl Blobs {
    /// Opens (creates) the local blob folder `data_dir/blobs`. `clustered`: the node is (or
    /// joins) a cluster of several nodes, where local files would not survive losing a node.
    pub fn open(cfg: &BinaryConfig, data_dir: &std::path::Path, clustered: bool, version: FhirVersion, s3: Option<S3>) -> std::io::Result<Blobs> {
        let dir: PathBuf = data_dir.join("blobs");
        std::fs::create_dir_all(&dir)?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(std::io::Error::other)?;
        Ok(Blobs {
            cfg: cfg.clone(),
            s3,
            local: Arc::new(local),
            local_place: format!("the local blob store {}", dir.display()),
            local_dir: dir,
            clustered,
            version,
        })
    }

    /// Where an upload of at least `size` bytes goes (`None`: inline).
    pub fn place_for(&self, size: usize) -> Result<Option<Place>, BinaryError> {
        if self.cfg.store == StoreChoice::S3 {
            return Ok(Some(Place::S3));
        }
        if size <= self.cfg.inline_max_bytes {
            return Ok(None);
        }
        match (&self.s3, self.clustered) {
            (Some(_), _) => Ok(Some(Place::S3)),
            (None, true) => Err(BinaryError::ClusterNeedsS3 { limit: self.cfg.inline_max_bytes }),
            (None, false) => Ok(Some(Place::Local)),
        }
    }

    /// A fresh relative key under `binary/` (tenants under `binary/t/{tenant}/`).
    pub fn new_key(tenant: Option<&str>) -> String {
        let id = uuid::Uuid::new_v4();
        match tenant {
            Some(t) => format!("binary/t/{t}/{id}"),
            None => format!("binary/{id}"),
        }
    }

    /// The store holding `place` and its description for messages.
    fn target(&self, place: Place) -> Result<(Arc<dyn ObjectStore>, &str), BinaryError> {
        match place {
            Place::Local => Ok((self.local.clone(), &self.local_place)),
            Place::S3 => {
                let s3 = self.s3.as_ref().ok_or_else(|| BinaryError::NeedsS3("content stored in S3".into()))?;
                Ok((s3.store(), s3.describe()))
            }
        }
    }

    /// The full key of a relative key in `place`.
    pub fn full_key(&self, place: Place, rel: &str) -> Path {
        match (place, &self.s3) {
            (Place::S3, Some(s3)) => s3.key(rel),
            _ => Path::from(rel),
        }
    }

    /// A streaming writer of the relative key `rel` in `place`.
    pub fn writer(&self, place: Place, rel: &str) -> Result<ObjectWriter, BinaryError> {
        let (store, desc) = self.target(place)?;
        Ok(ObjectWriter::new(store, self.full_key(place, rel), desc))
    }

    /// The content of `r`: its size and a stream of chunks.
    pub async fn open_content(&self, r: &ContentRef) -> Result<(u64, futures::stream::BoxStream<'static, Result<bytes::Bytes, ObjectsError>>), BinaryError> {
        use futures::{StreamExt, TryStreamExt};
        if r.place == Place::Local {
            // Streamed in 256 KiB reads: several times faster than the store's 8 KiB chunks.
            let path = self.local_dir.join(self.full_key(r.place, &r.key).as_ref());
            let missing = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::NotFound => ObjectsError::NotFound { key: r.key.clone(), place: self.local_place.clone() },
                _ => ObjectsError::Failed { place: self.local_place.clone(), detail: e.to_string() },
            };
            let file = tokio::fs::File::open(&path).await.map_err(missing)?;
            let size = file.metadata().await.map_err(missing)?.len();
            let place = self.local_place.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map_err(move |e| ObjectsError::Failed { place: place.clone(), detail: e.to_string() });
            return Ok((size, stream.boxed()));
        }
        let (store, desc) = self.target(r.place)?;
        let got = store.get(&self.full_key(r.place, &r.key)).await.map_err(|e| ObjectsError::from_store(e, desc))?;
        let size = got.meta.size;
        let desc = desc.to_string();
        Ok((size, got.into_stream().map_err(move |e| ObjectsError::from_store(e, &desc)).boxed()))
    }

    /// The size of the object of `r` (`None` when it does not exist yet: a presigned upload
    /// that has not happened).
    pub async fn size_of(&self, r: &ContentRef) -> Result<Option<u64>, BinaryError> {
        let (store, desc) = self.target(r.place)?;
        match store.head(&self.full_key(r.place, &r.key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ObjectsError::from_store(e, desc).into()),
        }
    }

    /// Best effort: removes an object no version points to (a write that failed after upload).
    pub async fn discard(&self, place: Place, rel: &str) {
        if let Ok((store, desc)) = self.target(place) {
            if let Err(e) = store.delete(&self.full_key(place, rel)).await {
                tracing::warn!(key = rel, "could not remove an unused object from {desc}: {e}");
            }
        }
    }

    /// The S3 client, or [`BinaryError::NeedsS3`] naming `what` needs it.
    pub fn require_s3(&self, what: &str) -> Result<&S3, BinaryError> {
        self.s3.as_ref().ok_or_else(|| BinaryError::NeedsS3(what.to_string()))
    }
}

/// The name of Binary's content element in this FHIR version (`data`; STU3 `content`).
pub fn data_field(version: FhirVersion) -> &'static str {
    match version {
        FhirVersion::Stu3 => "content",
        _ => "data",
    }
}

/// Vets a client's JSON Binary before it is written (HTTP create / update / patch and bundle
/// entries): a body that carries the content inline drops a stale content extension; a body
/// that carries the extension without inline content must point at the object the current
/// version of the same Binary points to (re-saving metadata), anything else is refused.
pub fn vet_json_write(version: FhirVersion, store: &Store, rtype: &str, id: Option<&str>, body: Option<&mut Value>) -> Result<(), BinaryError> {
    let (Some(body), "Binary") = (body, rtype) else { return Ok(()) };
    let field = data_field(version);
    let Some(claimed) = ContentRef::from_resource(body, version) else { return Ok(()) };
    if body.get(field).is_some() {
        content::remove(body, version);
        return Ok(());
    }
    let current = id.filter(|i| !i.is_empty()).and_then(|id| store.read(rtype, id).ok()).and_then(|(_, rec)| serde_json::from_slice::<Value>(rec.body()).ok());
    let held = current.as_ref().and_then(|c| ContentRef::from_resource(c, version));
    match held {
        Some(h) if h.key == claimed.key && h.place == claimed.place => {
            // The server's own size and digest, never the client's claim of them.
            content::remove(body, version);
            h.set_on(body, version);
            Ok(())
        }
        _ => Err(BinaryError::Forged(format!(
            "the Binary carries the extension {CONTENT_EXT}, which Kiln sets itself: it may only repeat the one the current version of this Binary has. Send the content as {field} or as a raw body"
        ))),
    }
}
