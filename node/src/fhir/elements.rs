//! `_summary` and `_elements`: which top-level elements of a resource a subsetted read returns, from
//! the `isSummary` / `min` flags of the base StructureDefinitions (`schemas/*/elements.json`).
//! Subsetted resources are tagged `SUBSETTED` as the spec requires.

use serde::Deserialize;
use serde_json::{json, Value};

/// `isSummary` and mandatory top-level elements of one resource type (`deceased[x]` style names).
#[derive(Debug, Deserialize)]
pub struct TypeElements {
    pub summary: Vec<String>,
    pub mandatory: Vec<String>,
}

/// The `_summary` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryMode {
    True,
    Text,
    Data,
    False,
    Count,
}

impl SummaryMode {
    pub fn parse(s: &str) -> Option<SummaryMode> {
        Some(match s {
            "true" => SummaryMode::True,
            "text" => SummaryMode::Text,
            "data" => SummaryMode::Data,
            "false" => SummaryMode::False,
            "count" => SummaryMode::Count,
            _ => return None,
        })
    }
}

/// A requested subset: `_summary` and/or `_elements`.
#[derive(Debug, Clone, Default)]
pub struct Subset {
    pub summary: Option<SummaryMode>,
    pub elements: Option<Vec<String>>,
}

const ALWAYS: [&str; 3] = ["resourceType", "id", "meta"];

/// Whether JSON key `key` is the element `name` (`deceased[x]` matches `deceasedBoolean`), or its
/// primitive-extension sibling `_name`.
fn key_is(key: &str, name: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    match name.strip_suffix("[x]") {
        Some(stem) => key.strip_prefix(stem).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == name,
    }
}

impl Subset {
    pub fn is_empty(&self) -> bool {
        self.elements.is_none() && matches!(self.summary, None | Some(SummaryMode::False))
    }

    /// Removes the elements this subset excludes; tags the resource `SUBSETTED` if it did.
    pub fn apply(&self, body: &mut Value, els: Option<&TypeElements>) -> bool {
        if self.is_empty() {
            return false;
        }
        let Some(obj) = body.as_object_mut() else { return false };
        let mandatory: &[String] = els.map(|e| e.mandatory.as_slice()).unwrap_or(&[]);
        let keep = |key: &str| -> bool {
            if ALWAYS.contains(&key) || mandatory.iter().any(|m| key_is(key, m)) {
                return true;
            }
            let by_summary = match self.summary {
                Some(SummaryMode::True) => els.is_some_and(|e| e.summary.iter().any(|s| key_is(key, s))),
                Some(SummaryMode::Text) => key_is(key, "text"),
                Some(SummaryMode::Data) => !key_is(key, "text"),
                _ => true,
            };
            let by_elements = self.elements.as_ref().is_none_or(|list| list.iter().any(|e| key_is(key, e)));
            by_summary && by_elements
        };
        let before = obj.len();
        obj.retain(|k, _| keep(k));
        let subsetted = obj.len() != before || self.summary == Some(SummaryMode::True) || self.elements.is_some();
        if subsetted {
            tag_subsetted(body);
        }
        subsetted
    }
}

/// Adds the `SUBSETTED` tag to `meta.tag`.
pub fn tag_subsetted(body: &mut Value) {
    let Some(obj) = body.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource encoded in summary mode"
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn els() -> TypeElements {
        TypeElements {
            summary: vec!["id".into(), "meta".into(), "name".into(), "deceased[x]".into()],
            mandatory: vec!["status".into()],
        }
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "text": {"div": "x"}, "name": [{"family": "A"}],
               "deceasedBoolean": false, "status": "active", "photo": [{}], "_status": {"id": "s"}})
    }

    #[test]
    fn summary_true_keeps_summary_and_mandatory() {
        let mut p = patient();
        assert!(Subset { summary: Some(SummaryMode::True), elements: None }.apply(&mut p, Some(&els())));
        let keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["resourceType", "id", "name", "deceasedBoolean", "status", "_status", "meta"]);
        assert_eq!(p["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn summary_text_and_data() {
        let mut p = patient();
        Subset { summary: Some(SummaryMode::Text), elements: None }.apply(&mut p, Some(&els()));
        assert!(p.get("text").is_some() && p.get("name").is_none() && p.get("status").is_some());
        let mut p = patient();
        Subset { summary: Some(SummaryMode::Data), elements: None }.apply(&mut p, Some(&els()));
        assert!(p.get("text").is_none() && p.get("photo").is_some());
    }

    #[test]
    fn elements_keeps_listed_and_mandatory() {
        let mut p = patient();
        Subset { summary: None, elements: Some(vec!["photo".into()]) }.apply(&mut p, Some(&els()));
        assert!(p.get("photo").is_some() && p.get("status").is_some() && p.get("name").is_none());
    }

    #[test]
    fn summary_false_is_untouched() {
        let mut p = patient();
        assert!(!Subset { summary: Some(SummaryMode::False), elements: None }.apply(&mut p, Some(&els())));
        assert_eq!(p, patient());
    }
}
