//! The `[s3]` section: where an S3-compatible object store is and how to sign in to it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[s3]`: an S3-compatible bucket (AWS S3, Garage, MinIO, s3s-fs) used for Binary content and
/// export files. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (`https://garage.example:3900`); unset means AWS S3 of `region`.
    pub endpoint: Option<String>,
    /// SigV4 region (Garage's `s3_region`; any value the server expects).
    pub region: String,
    /// Bucket name (must exist).
    pub bucket: String,
    pub access_key_id: String,
    /// File holding the secret access key (trailing whitespace ignored). Unset: the environment
    /// variable `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_file: Option<PathBuf>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`). Garage, MinIO and s3s-fs want `true`.
    pub path_style: bool,
    /// Prefix of every key Kiln writes (e.g. `kiln/prod/`), so a bucket can be shared.
    pub prefix: String,
    /// Lifetime of presigned URLs Kiln hands out, in seconds (1 to 604800, SigV4's limit).
    pub presign_expiry_secs: u64,
    /// Allows a plain `http://` endpoint (a loopback test server). Refused otherwise: keys and
    /// content would cross the network in clear.
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key_file: None,
            path_style: false,
            prefix: String::new(),
            presign_expiry_secs: 3600,
            allow_http: false,
        }
    }
}

impl S3Config {
    /// Checks what can be checked without reading files or contacting the server.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("s3.bucket is required".into());
        }
        if self.access_key_id.is_empty() {
            return Err("s3.access_key_id is required".into());
        }
        if self.region.is_empty() {
            return Err("s3.region must not be empty (us-east-1 when in doubt)".into());
        }
        if !(1..=604_800).contains(&self.presign_expiry_secs) {
            return Err(format!("s3.presign_expiry_secs = {} must be between 1 and 604800 (7 days, SigV4's limit)", self.presign_expiry_secs));
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") || self.prefix.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("s3.prefix = {:?} must be a relative key prefix like \"kiln/\" (no leading '/', '//', '.' or '..')", self.prefix));
        }
        if let Some(ep) = &self.endpoint {
            let Some((scheme, rest)) = ep.split_once("://") else {
                return Err(format!("s3.endpoint = {ep:?} is not a URL (http:// or https://)"));
            };
            if rest.is_empty() {
                return Err(format!("s3.endpoint = {ep:?} has no host"));
            }
            match scheme {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => return Err(format!("s3.endpoint = {ep:?} is plain http: set s3.allow_http = true (only for a loopback or otherwise private endpoint)")),
                _ => return Err(format!("s3.endpoint = {ep:?} must start with http:// or https://")),
            }
        }
        Ok(())
    }

    /// Where this bucket is, for messages: `bucket B at endpoint E`.
    pub fn describe(&self) -> String {
        format!("bucket {} at endpoint {}", self.bucket, self.endpoint.as_deref().unwrap_or("AWS S3"))
    }

    /// The secret access key: the file's content, else `AWS_SECRET_ACCESS_KEY`.
    pub fn secret(&self) -> Result<String, String> {
        let secret = match &self.secret_access_key_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read s3.secret_access_key_file {}: {e}", path.display()))?
                .trim_end()
                .to_string(),
            None => std::env::var("AWS_SECRET_ACCESS_KEY")
                .map_err(|_| "s3.secret_access_key_file is not set and neither is the environment variable AWS_SECRET_ACCESS_KEY".to_string())?,
        };
        if secret.is_empty() {
            return Err("the S3 secret access key is empty".into());
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_validates() {
        let c: S3Config = toml::from_str("bucket = \"b\"\naccess_key_id = \"k\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\npath_style = true\n").unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.presign_expiry_secs, 3600);
        assert_eq!(c.prefix, "");
        c.validate().unwrap();
        assert!(toml::from_str::<S3Config>("buckt = \"b\"").is_err(), "unknown keys are refused");
        let plain = S3Config { allow_http: false, ..c.clone() };
        assert!(plain.validate().unwrap_err().contains("allow_http"));
        let no_bucket = S3Config { bucket: String::new(), ..c.clone() };
        assert!(no_bucket.validate().unwrap_err().contains("bucket"));
        let bad_prefix = S3Config { prefix: "/x/".into(), ..c.clone() };
        assert!(bad_prefix.validate().is_err());
        let long = S3Config { presign_expiry_secs: 700_000, ..c.clone() };
        assert!(long.validate().unwrap_err().contains("604800"));
        let aws = S3Config { endpoint: None, allow_http: false, ..c };
        aws.validate().unwrap();
        assert_eq!(aws.describe(), "bucket b at endpoint AWS S3");
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let c = S3Config { secret_access_key_file: Some(path), ..S3Config::default() };
        assert_eq!(c.secret().unwrap(), "s3cr3t");
        let missing = S3Config { secret_access_key_file: Some(dir.path().join("nope")), ..S3Config::default() };
        assert!(missing.secret().unwrap_err().contains("nope"));
    }
}
