//! [`ExportSink`]: where the NDJSON parts of a job go. [`LocalSink`] (the default) writes files
//! under the data folder, which every node serves at `[base]/_export/{job}/{file}` (a node that
//! lacks a part, because another node wrote it, writes it again from its own replica: parts are
//! deterministic, see [`super::scan`]). The S3 sink ([`super::s3_sink`]) uploads objects and
//! hands out presigned URLs.

use std::path::PathBuf;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::ExportError;

/// The destination of one job's parts.
pub trait ExportSink: Send + Sync {
    /// Opens a new part `file` of `job` (replacing any earlier attempt at it).
    fn open<'a>(&'a self, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<Box<dyn PartWriter>, ExportError>>;
    /// The URL a client downloads a written part from; `base` is the FHIR base of the request.
    fn url<'a>(&'a self, base: &'a str, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<String, ExportError>>;
    /// Whether the URLs need the client's access token (`requiresAccessToken`).
    fn requires_access_token(&self) -> bool;
    /// Deletes every output of `job` (cancel, expiry).
    fn delete_job<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), ExportError>>;
}

/// One part being written. Nothing is visible under the part's name until [`Self::finish`].
pub trait PartWriter: Send {
    fn write(&mut self, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), ExportError>>;
    /// Makes the part durable and visible.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), ExportError>>;
    /// Drops what was written.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Parts as files: `{dir}/{job}/{file}`.
pub struct LocalSink {
    pub dir: PathBuf,
}

impl LocalSink {
    pub fn path(&self, job: &str, file: &str) -> PathBuf {
        self.dir.join(job).join(file)
    }

    fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> ExportError {
        ExportError::Sink(format!("{what} {}: {e}", path.display()))
    }

    /// A temporary file in the job's folder, renamed to `file` by [`LocalPart::finish`].
    pub async fn create(&self, job: &str, file: &str) -> Result<LocalPart, ExportError> {
        let folder = self.dir.join(job);
        tokio::fs::create_dir_all(&folder).await.map_err(|e| Self::io("cannot create", &folder, e))?;
        let tmp = folder.join(format!(".{file}.{}.tmp", uuid::Uuid::new_v4()));
        let out = tokio::fs::File::create(&tmp).await.map_err(|e| Self::io("cannot create", &tmp, e))?;
        Ok(LocalPart { out: Some(tokio::io::BufWriter::with_capacity(1 << 20, out)), tmp, path: folder.join(file) })
    }
}

impl ExportSink for LocalSink {
    fn open<'a>(&'a self, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<Box<dyn PartWriter>, ExportError>> {
        Box::pin(async move { Ok(Box::new(self.create(job, file).await?) as Box<dyn PartWriter>) })
    }

    fn url<'a>(&'a self, base: &'a str, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<String, ExportError>> {
        Box::pin(async move { Ok(format!("{base}/_export/{job}/{file}")) })
    }

    fn requires_access_token(&self) -> bool {
        true
    }

    fn delete_job<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            let folder = self.dir.join(job);
            match tokio::fs::remove_dir_all(&folder).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Self::io("cannot delete", &folder, e)),
            }
        })
    }
}

/// A local part being written. Dropped unfinished (its actor stopped), its temporary file goes.
pub struct LocalPart {
    /// `None` once finished.
    out: Option<tokio::io::BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl PartWriter for LocalPart {
    fn write(&mut self, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move {
            let out = self.out.as_mut().ok_or_else(|| ExportError::Internal("write after finish".into()))?;
            out.write_all(&bytes).await.map_err(|e| LocalSink::io("cannot write", &self.tmp, e))
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<(), ExportError>> {
        Box::pin(async move {
            let mut out = self.out.take().ok_or_else(|| ExportError::Internal("finished twice".into()))?;
            let result = async {
                out.flush().await.map_err(|e| LocalSink::io("cannot write", &self.tmp, e))?;
                out.get_mut().sync_all().await.map_err(|e| LocalSink::io("cannot sync", &self.tmp, e))?;
                drop(out);
                tokio::fs::rename(&self.tmp, &self.path).await.map_err(|e| LocalSink::io("cannot rename", &self.tmp, e))
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&self.tmp).await;
            }
            result
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.out.take();
            let _ = tokio::fs::remove_file(&self.tmp).await;
        })
    }
}

impl Drop for LocalPart {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
