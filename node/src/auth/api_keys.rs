//! API keys (`x-api-key` header) for services without a token issuer: each key maps to one group
//! of the rules. Only SHA-256 hashes of keys are stored. The file (`api_keys_file`):
//!
//! ```toml
//! [[key]]
//! name = "lab-feed"
//! group = "practitioner"
//! sha256 = "9f86d081884c7d65…"   # printf %s "$KEY" | sha256sum
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuthError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    group: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// Known keys by hash: (name, group).
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], (String, String)>,
}

/// The SHA-256 of a key, as stored.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    pub fn from_file(path: &Path) -> Result<ApiKeys, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Config(format!("api_keys_file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| AuthError::Config(format!("api_keys_file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        for k in file.key {
            let bytes = hex::decode(k.sha256.trim()).map_err(|e| format!("key {}: sha256 is not hex: {e}", k.name))?;
            let digest: [u8; 32] = bytes.try_into().map_err(|_| format!("key {}: sha256 must be 64 hex digits", k.name))?;
            if by_hash.insert(digest, (k.name.clone(), k.group)).is_some() {
                return Err(format!("key {}: the same key is listed twice", k.name));
            }
        }
        Ok(ApiKeys { by_hash })
    }

    /// The (name, group) of a presented key.
    pub fn lookup(&self, key: &str) -> Option<(&str, &str)> {
        self.by_hash.get(&hash(key)).map(|(n, g)| (n.as_str(), g.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_by_hash() {
        let text = format!("[[key]]\nname = \"feed\"\ngroup = \"auditor\"\nsha256 = \"{}\"\n", hex::encode(hash("s3cret-key")));
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.lookup("s3cret-key"), Some(("feed", "auditor")));
        assert_eq!(keys.lookup("s3cret-kex"), None);
        assert!(ApiKeys::parse("[[key]]\nname = \"x\"\ngroup = \"g\"\nsha256 = \"zz\"\n").is_err());
    }
}
