//! The content extension of a Binary ([`super::CONTENT_EXT`] on `_data` / STU3 `_content`):
//! reading it from a resource, writing it, removing it.

use serde_json::{json, Map, Value};

use super::{data_field, Place, CONTENT_EXT};
use crate::fhir::FhirVersion;

/// Where a Binary's content is, as recorded in the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRef {
    pub place: Place,
    /// Relative key (`binary/…`; `[s3] prefix` is added for S3).
    pub key: String,
    /// Bytes; unknown for a presigned upload.
    pub size: Option<u64>,
    /// Hex SHA-256 of the content; unknown for a presigned upload.
    pub sha256: Option<String>,
}

fn primitive_key(version: FhirVersion) -> String {
    format!("_{}", data_field(version))
}

impl ContentRef {
    /// The reference in `resource`, if it has one.
    pub fn from_resource(resource: &Value, version: FhirVersion) -> Option<ContentRef> {
        let exts = resource.get(primitive_key(version))?.get("extension")?.as_array()?;
        let ext = exts.iter().find(|e| e.get("url").and_then(Value::as_str) == Some(CONTENT_EXT))?;
        let subs = ext.get("extension")?.as_array()?;
        let sub = |name: &str| subs.iter().find(|s| s.get("url").and_then(Value::as_str) == Some(name));
        let text = |name: &str, value: &str| sub(name).and_then(|s| s.get(value)).and_then(Value::as_str).map(String::from);
        let place = match text("store", "valueCode").as_deref() {
            Some("s3") => Place::S3,
            Some("local") => Place::Local,
            _ => return None,
        };
        let key = text("key", "valueString")?;
        let size = sub("size").and_then(|s| s.get("valueInteger")).and_then(Value::as_u64);
        Some(ContentRef { place, key, size, sha256: text("sha256", "valueString") })
    }

    /// The extension element.
    pub fn to_extension(&self) -> Value {
        let mut subs = vec![json!({"url": "store", "valueCode": self.place.code()}), json!({"url": "key", "valueString": self.key})];
        if let Some(size) = self.size {
            subs.push(json!({"url": "size", "valueInteger": size}));
        }
        if let Some(sha) = &self.sha256 {
            subs.push(json!({"url": "sha256", "valueString": sha}));
        }
        json!({"url": CONTENT_EXT, "extension": subs})
    }

    /// Puts this reference into `resource` (replacing any earlier one; inline content removed).
    pub fn set_on(&self, resource: &mut Value, version: FhirVersion) {
        remove(resource, version);
        if let Some(obj) = resource.as_object_mut() {
            obj.shift_remove(data_field(version));
            let prim = obj.entry(primitive_key(version)).or_insert_with(|| Value::Object(Map::new()));
            if let Some(p) = prim.as_object_mut() {
                let exts = p.entry("extension").or_insert_with(|| Value::Array(Vec::new()));
                if let Some(a) = exts.as_array_mut() {
                    a.push(self.to_extension());
                }
            }
        }
    }
}

/// Removes the content extension from `resource` (and `_data` when nothing else is left in it).
pub fn remove(resource: &mut Value, version: FhirVersion) {
    let key = primitive_key(version);
    let Some(obj) = resource.as_object_mut() else { return };
    let empty = match obj.get_mut(&key).and_then(Value::as_object_mut) {
        Some(prim) => {
            if let Some(a) = prim.get_mut("extension").and_then(Value::as_array_mut) {
                a.retain(|e| e.get("url").and_then(Value::as_str) != Some(CONTENT_EXT));
                if a.is_empty() {
                    prim.shift_remove("extension");
                }
            }
            prim.is_empty()
        }
        None => false,
    };
    if empty {
        obj.shift_remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_removal() {
        let r = ContentRef { place: Place::S3, key: "binary/abc".into(), size: Some(5), sha256: Some("00ff".into()) };
        let mut b = json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="});
        r.set_on(&mut b, FhirVersion::R4);
        assert!(b.get("data").is_none(), "content is no longer inline");
        assert_eq!(b["_data"]["extension"][0]["url"], CONTENT_EXT);
        assert_eq!(ContentRef::from_resource(&b, FhirVersion::R4), Some(r.clone()));
        assert_eq!(ContentRef::from_resource(&b, FhirVersion::Stu3), None, "STU3 uses _content");
        remove(&mut b, FhirVersion::R4);
        assert!(b.get("_data").is_none());
        let mut s = json!({"resourceType": "Binary", "contentType": "text/plain"});
        let local = ContentRef { place: Place::Local, key: "binary/t/x/1".into(), size: None, sha256: None };
        local.set_on(&mut s, FhirVersion::Stu3);
        assert_eq!(ContentRef::from_resource(&s, FhirVersion::Stu3), Some(local));
    }

    #[test]
    fn foreign_extensions_are_kept() {
        let mut b = json!({"resourceType": "Binary", "_data": {"extension": [{"url": "http://x", "valueString": "y"}]}});
        assert_eq!(ContentRef::from_resource(&b, FhirVersion::R4), None);
        ContentRef { place: Place::Local, key: "k".into(), size: None, sha256: None }.set_on(&mut b, FhirVersion::R4);
        assert_eq!(b["_data"]["extension"].as_array().unwrap().len(), 2);
        remove(&mut b, FhirVersion::R4);
        assert_eq!(b["_data"]["extension"][0]["url"], "http://x");
    }

    #[test]
    fn keys_are_fresh_and_tenant_scoped() {
        let a = super::super::Blobs::new_key(None);
        let b = super::super::Blobs::new_key(None);
        assert!(a.starts_with("binary/") && a != b);
        assert!(super::super::Blobs::new_key(Some("acme")).starts_with("binary/t/acme/"));
    }
}
