//! The S3 [`ExportSink`]: each part is an object `export/{job}/{file}` under the `[s3]` prefix,
//! streamed with a multipart upload ([`crate::objects::ObjectWriter`]); the manifest hands out
//! presigned GET URLs (`requiresAccessToken: false`), valid for `s3.presign_expiry_secs`.

use futures::future::BoxFuture;

use super::sink::{ExportSink, PartWriter};
use super::ExportError;
use crate::objects::{ObjectWriter, ObjectsError, S3};

/// Parts as objects in the `[s3]` bucket.
pub struct S3Sink {
    pub s3: S3,
}

impl S3Sink {
    fn key(&self, job: &str, file: &str) -> object_store::path::Path {
        self.s3.key(&format!("export/{job}/{file}"))
    }
}

fn sink_error(e: ObjectsError) -> ExportError {
    ExportError::Objects(e)
}

impl ExportSink for S3Sink {
    fn open<'a>(&'a self, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<Box<dyn PartWriter>, ExportError>> {
        Box::pin(async move { Ok(Box::new(S3Part(self.s3.writer(self.key(job, file)))) as Box<dyn PartWriter>) })
    }

    fn url<'a>(&'a self, _base: &'a str, job: &'a str, file: &'a str) -> BoxFuture<'a, Result<String, ExportError>> {
        Box::pin(async move { self.s3.presign_get(&self.key(job, file), self.s3.default_expiry()).await.map_err(sink_error) })
    }

    fn requires_access_token(&self) -> bool {
        false
    }

    fn delete_job<'a>(&'a self, job: &'a str) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            self.s3.delete_prefix(&self.s3.key(&format!("export/{job}/"))).await.map_err(sink_error)?;
            Ok(())
        })
    }
}

/// A part being uploaded.
struct S3Part(ObjectWriter);

impl PartWriter for S3Part {
    fn write(&mut self, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), ExportError>> {
        Box::pin(async move { self.0.write(&bytes).await.map_err(sink_error) })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), ExportError>> {
        Box::pin(async move { self.0.finish().await.map(|_| ()).map_err(sink_error) })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.0.abort().await })
    }
}
