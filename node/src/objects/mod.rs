//! Object storage: an S3-compatible bucket through the `object_store` crate (AWS S3, Garage,
//! MinIO; `s3s-fs` in the tests), and a streaming writer that works on any
//! [`ObjectStore`] (the node's local blob folder too).
//!
//! - [`S3::open`] builds the client from `[s3]` ([`S3Config`]) without contacting the server: a
//!   node starts while the bucket is down, and requests that need it fail with a clear
//!   [`ObjectsError`] (502/503 OperationOutcome) while everything else keeps serving.
//! - [`S3::key`] puts the configured `prefix` in front of a key; every other method takes such a
//!   full key ([`Path`]).
//! - [`ObjectWriter`] streams an object of any size: a plain PUT below [`PART_BYTES`], a multipart
//!   upload (parts of [`PART_BYTES`], at most two in flight) above.
//! - [`S3::presign_get`] / [`S3::presign_put`] mint SigV4 presigned URLs (the bucket checks them;
//!   Kiln is not on the data path).
//!
//! Users: Binary content (`crate::binary`, prefix `binary/`) and, later, `$export` files.
//!
//! ```ignore
//! let s3 = S3::open(cfg.s3.as_ref().unwrap())?;            // at start (AppState::s3 holds one)
//! let key = s3.key("export/JOB/Patient-1.ndjson");          // "{prefix}export/JOB/…"
//! let mut w = s3.writer(key.clone());
//! for line in lines { w.write(line.as_bytes()).await?; }     // waits when two parts are in flight
//! let size = w.finish().await?;                              // or w.abort().await on error
//! let url = s3.presign_get(&key, s3.default_expiry()).await?;
//! s3.delete_prefix(&s3.key("export/JOB")).await?;            // a cancelled job's files
//! ```

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

pub use config::S3Config;

/// Size of one part of a multipart upload (S3's minimum is 5 MiB); objects below it are one PUT.
pub const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts of one upload in flight at once (memory per upload ≈ (this + 1) × [`PART_BYTES`]).
const PARTS_IN_FLIGHT: usize = 2;

/// What can go wrong with object storage, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// `[s3]` is not usable (start-up refuses it).
    #[error("invalid [s3] configuration: {0}")]
    Config(String),
    #[error("S3 refused the credentials ({status}) for {place}: check s3.access_key_id and the secret access key, and that the key may use this bucket ({detail})")]
    Credentials { status: u16, place: String, detail: String },
    #[error("object {key} does not exist in {place}")]
    NotFound { key: String, place: String },
    /// A write answered "not found": the bucket itself is missing.
    #[error("{place} does not exist (or the key may not see it): create the bucket first ({detail})")]
    NoBucket { place: String, detail: String },
    #[error("{place} is unreachable or failing (retried): {detail}")]
    Unavailable { place: String, detail: String },
    #[error("{place} refused the request: {detail}")]
    Failed { place: String, detail: String },
}

impl ObjectsError {
    /// Maps an error of a write: there, "not found" can only mean the bucket.
    fn from_write(e: object_store::Error, place: &str) -> ObjectsError {
        match e {
            object_store::Error::NotFound { source, .. } => ObjectsError::NoBucket { place: place.to_string(), detail: source.to_string() },
            other => ObjectsError::from_store(other, place),
        }
    }

    /// Maps an `object_store` error of the store at `place` (e.g. "bucket B at endpoint E").
    pub fn from_store(e: object_store::Error, place: &str) -> ObjectsError {
        let place = place.to_string();
        match e {
            object_store::Error::NotFound { path, .. } => ObjectsError::NotFound { key: path, place },
            object_store::Error::PermissionDenied { source, .. } => ObjectsError::Credentials { status: 403, place, detail: source.to_string() },
            object_store::Error::Unauthenticated { source, .. } => ObjectsError::Credentials { status: 401, place, detail: source.to_string() },
            // Some calls (list, multipart) report the server's answer only as text.
            object_store::Error::Generic { source, .. } => {
                let detail = source.to_string();
                if detail.contains("403 Forbidden") {
                    ObjectsError::Credentials { status: 403, place, detail }
                } else if detail.contains("401 Unauthorized") {
                    ObjectsError::Credentials { status: 401, place, detail }
                } else if detail.contains("NoSuchBucket") {
                    ObjectsError::NoBucket { place, detail }
                } else if detail.contains("status code: 4") {
                    ObjectsError::Failed { place, detail }
                } else {
                    ObjectsError::Unavailable { place, detail }
                }
            }
            other => ObjectsError::Failed { place, detail: other.to_string() },
        }
    }
}

/// A bucket of an S3-compatible server. Cheap to clone (one client, shared).
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

struct Inner {
    s3: Arc<AmazonS3>,
    cfg: S3Config,
    place: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3({})", self.inner.place)
    }
}

impl S3 {
    /// Builds the client (reads the secret; does not contact the server).
    pub fn open(cfg: &S3Config) -> Result<S3, ObjectsError> {
        cfg.validate().map_err(ObjectsError::Config)?;
        let secret = cfg.secret().map_err(ObjectsError::Config)?;
        // Bounded waits: a bucket that is down answers a request with 503 in seconds, not minutes.
        let options = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(20), ..RetryConfig::default() };
        let mut b = AmazonS3Builder::new()
            .with_region(&cfg.region)
            .with_bucket_name(&cfg.bucket)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep.trim_end_matches('/'));
        }
        let s3 = b.build().map_err(|e| ObjectsError::Config(e.to_string()))?;
        Ok(S3 { inner: Arc::new(Inner { s3: Arc::new(s3), cfg: cfg.clone(), place: cfg.describe() }) })
    }

    /// The full key of `rel` (a `/`-separated relative key such as `binary/abc`): the configured
    /// prefix, then `rel`.
    pub fn key(&self, rel: &str) -> Path {
        prefixed(&self.inner.cfg.prefix, rel)
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &S3Config {
        &self.inner.cfg
    }

    /// "bucket B at endpoint E", for messages.
    pub fn describe(&self) -> &str {
        &self.inner.place
    }

    /// The bucket as a generic [`ObjectStore`] (keys are full keys: use [`S3::key`]).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.inner.s3.clone()
    }

    /// A streaming writer of the object `key`.
    pub fn writer(&self, key: Path) -> ObjectWriter {
        ObjectWriter::new(self.store(), key, &self.inner.place)
    }

    /// `presign_expiry_secs` of the configuration.
    pub fn default_expiry(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.presign_expiry_secs)
    }

    /// A presigned URL that lets its holder GET `key` until `expiry` has passed.
    pub async fn presign_get(&self, key: &Path, expiry: Duration) -> Result<String, ObjectsError> {
        self.presign(reqwest::Method::GET, key, expiry).await
    }

    /// A presigned URL that lets its holder PUT (create or replace) `key` until `expiry` has passed.
    pub async fn presign_put(&self, key: &Path, expiry: Duration) -> Result<String, ObjectsError> {
        self.presign(reqwest::Method::PUT, key, expiry).await
    }

    async fn presign(&self, method: reqwest::Method, key: &Path, expiry: Duration) -> Result<String, ObjectsError> {
        let url = self.inner.s3.signed_url(method, key, expiry).await.map_err(|e| self.err(e))?;
        Ok(url.to_string())
    }

    /// Checks that the bucket answers and takes the credentials (lists at most one key under the
    /// prefix). A node does not need this to start; it logs the answer.
    pub async fn check(&self) -> Result<(), ObjectsError> {
        let prefix = self.key("");
        let mut listing = self.inner.s3.list(if prefix.as_ref().is_empty() { None } else { Some(&prefix) });
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(ObjectsError::from_write(e, &self.inner.place)),
        }
    }

    /// Size and modification time of `key` ([`ObjectsError::NotFound`] when absent).
    pub async fn head(&self, key: &Path) -> Result<ObjectMeta, ObjectsError> {
        self.inner.s3.head(key).await.map_err(|e| self.err(e))
    }

    /// The content of `key` as a stream of chunks.
    pub async fn get_stream(&self, key: &Path) -> Result<BoxStream<'static, Result<Bytes, ObjectsError>>, ObjectsError> {
        get_stream(&self.store(), key, &self.inner.place).await
    }

    /// Deletes every object whose key starts with the full key `prefix` (as a folder: `a/b`
    /// matches `a/b/c`, not `a/bc`); returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<u64, ObjectsError> {
        let store = self.store();
        let locations = store.list(Some(prefix)).map_ok(|m| m.location).boxed();
        let deleted: Vec<Path> = store.delete_stream(locations).try_collect().await.map_err(|e| self.err(e))?;
        Ok(deleted.len() as u64)
    }

    fn err(&self, e: object_store::Error) -> ObjectsError {
        ObjectsError::from_store(e, &self.inner.place)
    }
}

/// `prefix` (a folder; a missing trailing `/` is implied) followed by `rel`.
pub fn prefixed(prefix: &str, rel: &str) -> Path {
    let prefix = prefix.trim_matches('/');
    let rel = rel.trim_start_matches('/');
    if prefix.is_empty() {
        Path::from(rel)
    } else {
        Path::from(format!("{prefix}/{rel}"))
    }
}

/// The content of `key` in `store` as a stream of chunks (errors name `place`).
pub async fn get_stream(store: &Arc<dyn ObjectStore>, key: &Path, place: &str) -> Result<BoxStream<'static, Result<Bytes, ObjectsError>>, ObjectsError> {
    let got = store.get(key).await.map_err(|e| ObjectsError::from_store(e, place))?;
    let place = place.to_string();
    Ok(got.into_stream().map_err(move |e| ObjectsError::from_store(e, &place)).boxed())
}

/// Streams one object into a store: bytes are buffered up to [`PART_BYTES`]; an object that
/// stays below is written with one PUT at [`ObjectWriter::finish`], a larger one becomes a
/// multipart upload with at most two parts in flight ([`ObjectWriter::write`] waits for room).
/// Nothing is visible under the key before `finish` succeeds; on an error call
/// [`ObjectWriter::abort`] so the store drops the parts.
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    place: String,
    buf: Vec<u8>,
    upload: Option<WriteMultipart>,
    written: u64,
}

impl ObjectWriter {
    /// A writer of `key` in `store`; `place` names the store in errors.
    pub fn new(store: Arc<dyn ObjectStore>, key: Path, place: &str) -> ObjectWriter {
        ObjectWriter { store, key, place: place.to_string(), buf: Vec::new(), upload: None, written: 0 }
    }

    /// The key being written.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; may wait for a part upload to finish.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ObjectsError> {
        self.written += bytes.len() as u64;
        if let Some(up) = self.upload.as_mut() {
            up.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| ObjectsError::from_write(e, &self.place))?;
            up.write(bytes);
            return Ok(());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PART_BYTES {
            let upload = self.store.put_multipart(&self.key).await.map_err(|e| ObjectsError::from_write(e, &self.place))?;
            let mut up = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            up.put(Bytes::from(std::mem::take(&mut self.buf)));
            self.upload = Some(up);
        }
        Ok(())
    }

    /// Completes the object; returns its size.
    pub async fn finish(mut self) -> Result<u64, ObjectsError> {
        match self.upload.take() {
            Some(up) => {
                up.finish().await.map_err(|e| ObjectsError::from_write(e, &self.place))?;
            }
            None => {
                let buf = std::mem::take(&mut self.buf);
                self.store.put(&self.key, PutPayload::from(buf)).await.map_err(|e| ObjectsError::from_write(e, &self.place))?;
            }
        }
        Ok(self.written)
    }

    /// Gives up: a multipart upload is aborted (its parts deleted); nothing was written otherwise.
    pub async fn abort(mut self) {
        if let Some(up) = self.upload.take() {
            if let Err(e) = up.abort().await {
                tracing::warn!(key = %self.key, "aborting a multipart upload in {}: {e}", self.place);
            }
        }
    }
}

impl Drop for ObjectWriter {
    /// A writer dropped mid-upload (the client went away and its request was dropped) aborts
    /// the multipart upload in the background, so the bucket does not keep its parts.
    fn drop(&mut self) {
        if let (Some(up), Ok(rt)) = (self.upload.take(), tokio::runtime::Handle::try_current()) {
            let (key, place) = (self.key.clone(), std::mem::take(&mut self.place));
            rt.spawn(async move {
                if let Err(e) = up.abort().await {
                    tracing::warn!(key = %key, "aborting an abandoned multipart upload in {place}: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_the_prefix() {
        assert_eq!(prefixed("", "binary/x").as_ref(), "binary/x");
        assert_eq!(prefixed("kiln/prod/", "binary/x").as_ref(), "kiln/prod/binary/x");
        assert_eq!(prefixed("kiln", "/binary/x").as_ref(), "kiln/binary/x");
    }

    #[test]
    fn open_checks_the_config_without_contacting_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "abc\n").unwrap();
        let cfg = S3Config {
            endpoint: Some("http://127.0.0.1:1".into()),
            bucket: "b".into(),
            access_key_id: "k".into(),
            secret_access_key_file: Some(secret.clone()),
            path_style: true,
            allow_http: true,
            prefix: "p/".into(),
            ..S3Config::default()
        };
        let s3 = S3::open(&cfg).unwrap();
        assert_eq!(s3.key("binary/a").as_ref(), "p/binary/a");
        assert_eq!(s3.describe(), "bucket b at endpoint http://127.0.0.1:1");
        let missing = S3Config { secret_access_key_file: Some(dir.path().join("missing")), ..cfg };
        let err = S3::open(&missing).unwrap_err().to_string();
        assert!(err.contains("secret_access_key_file") && err.contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn writer_streams_small_and_large_objects_to_a_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        for size in [0usize, 10, PART_BYTES + 123, 2 * PART_BYTES + 7] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let key = Path::from(format!("t/{size}"));
            let mut w = ObjectWriter::new(store.clone(), key.clone(), "test");
            for chunk in data.chunks(64 * 1024) {
                w.write(chunk).await.unwrap();
            }
            assert_eq!(w.finish().await.unwrap(), size as u64);
            let got: Vec<Bytes> = get_stream(&store, &key, "test").await.unwrap().try_collect().await.unwrap();
            assert_eq!(got.concat(), data, "size {size}");
        }
        let err = get_stream(&store, &Path::from("t/none"), "test").await.err().unwrap();
        assert!(matches!(err, ObjectsError::NotFound { .. }), "{err}");
    }
}
