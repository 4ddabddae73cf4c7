//! The Meilisearch document of one resource version: what full-text search sees. Built from the
//! stored body (meta stamped) on the leader's indexer, bounded in size whatever the resource.
//!
//! | field | content |
//! |---|---|
//! | `key` | primary key `{type}-{id}`, `.` in ids written `_` (Meilisearch ids allow `[A-Za-z0-9_-]`; FHIR ids never hold `_`, so the mapping is one-to-one) |
//! | `resourceType`, `id` | filterable / returned |
//! | `versionId` | number |
//! | `lastUpdated` | epoch milliseconds (number: Meilisearch filters compare numbers only) |
//! | `narrative` | `text.div` with tags stripped and entities decoded (what `_text` searches) |
//! | `displays`, `codes` | every `display` and `code` string (codings, quantities) |
//! | `strings` | every other string value (markdown, identifiers, references, contained narratives…) |

use serde_json::{json, Map, Value};

/// Characters of narrative kept.
pub const MAX_NARRATIVE_CHARS: usize = 32 * 1024;
/// Bytes of `strings` kept (values beyond are left out).
pub const MAX_STRINGS_BYTES: usize = 64 * 1024;
/// Entries of `strings`, `codes` and `displays` each.
pub const MAX_VALUES: usize = 2_000;
/// Nesting the walk follows (validation bounds it already; this holds without).
const MAX_DEPTH: usize = 64;

/// The primary key of `rtype/id`.
pub fn doc_key(rtype: &str, id: &str) -> String {
    format!("{rtype}-{}", id.replace('.', "_"))
}

/// (type, id) of a primary key (the inverse of [`doc_key`]).
pub fn parse_key(key: &str) -> Option<(&str, String)> {
    let (t, id) = key.split_once('-')?;
    Some((t, id.replace('_', ".")))
}

/// The document of `rtype/id` at `version`, written at `ts_micros`, from its stored JSON body.
pub fn build(rtype: &str, id: &str, version: u64, ts_micros: u64, body: &[u8]) -> Result<Value, String> {
    let resource: Value = serde_json::from_slice(body).map_err(|e| format!("stored {rtype}/{id}: {e}"))?;
    let mut acc = Acc::default();
    let narrative = resource.pointer("/text/div").and_then(Value::as_str).map(|d| truncate_chars(&strip_tags(d), MAX_NARRATIVE_CHARS)).unwrap_or_default();
    if let Value::Object(top) = &resource {
        for (k, v) in top {
            match k.as_str() {
                "resourceType" | "id" => {}
                "text" => {
                    // The narrative has its own field; the rest of `text` (status) is not content.
                }
                "meta" => {
                    if let Value::Object(meta) = v {
                        for (mk, mv) in meta {
                            if mk != "versionId" && mk != "lastUpdated" {
                                acc.walk(mk, mv, 1);
                            }
                        }
                    }
                }
                _ => acc.walk(k, v, 0),
            }
        }
    }
    Ok(json!({
        "key": doc_key(rtype, id),
        "resourceType": rtype,
        "id": id,
        "versionId": version,
        "lastUpdated": ts_micros / 1000,
        "narrative": narrative,
        "displays": acc.displays,
        "codes": acc.codes,
        "strings": acc.strings,
    }))
}

#[derive(Default)]
struct Acc {
    strings: Vec<String>,
    strings_bytes: usize,
    codes: Vec<String>,
    displays: Vec<String>,
}

impl Acc {
    fn walk(&mut self, key: &str, v: &Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::String(s) => self.string(key, s),
            Value::Array(items) => {
                for item in items {
                    self.walk(key, item, depth + 1);
                }
            }
            Value::Object(o) => self.object(o, depth + 1),
            _ => {}
        }
    }

    fn object(&mut self, o: &Map<String, Value>, depth: usize) {
        for (k, v) in o {
            self.walk(k, v, depth);
        }
    }

    fn string(&mut self, key: &str, s: &str) {
        if s.is_empty() {
            return;
        }
        match key {
            "code" if self.codes.len() < MAX_VALUES => self.codes.push(truncate_chars(s, 256)),
            "display" if self.displays.len() < MAX_VALUES => self.displays.push(truncate_chars(s, 1024)),
            "code" | "display" => {}
            // A contained resource's narrative: its text, not its markup.
            "div" => self.push(&strip_tags(s)),
            _ => self.push(s),
        }
    }

    fn push(&mut self, s: &str) {
        if self.strings.len() >= MAX_VALUES || self.strings_bytes >= MAX_STRINGS_BYTES {
            return;
        }
        let room = MAX_STRINGS_BYTES - self.strings_bytes;
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            self.strings_bytes += end;
            self.strings.push(s[..end].to_string());
        }
    }
}

fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The text of an XHTML fragment: tags removed (a block-level tag or `<br>` is a space), the
/// common entities and numeric references decoded, whitespace collapsed.
pub fn strip_tags(xhtml: &str) -> String {
    let mut out = String::with_capacity(xhtml.len());
    let mut rest = xhtml;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            // A tag (or comment): skip to its end; a stray '<' without one ends the text.
            let end = if after.starts_with("!--") { after.find("-->").map(|i| i + 3) } else { after.find('>').map(|i| i + 1) };
            match end {
                Some(e) => {
                    out.push(' ');
                    rest = &after[e..];
                }
                None => break,
            }
        } else if let Some(after) = rest.strip_prefix('&') {
            match after.find(';').filter(|i| *i <= 10).and_then(|i| entity(&after[..i]).map(|c| (i, c))) {
                Some((i, c)) => {
                    out.push(c);
                    rest = &after[i + 1..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        } else {
            let next = rest.find(['<', '&']).unwrap_or(rest.len());
            out.push_str(&rest[..next]);
            rest = &rest[next..];
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narratives_lose_their_markup() {
        assert_eq!(strip_tags(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter <b>James</b>&#160;Chalmers</p><br/>born&amp;raised &lt;here&gt; &#x41;</div>"#), "Peter James Chalmers born&raised <here> A");
        assert_eq!(strip_tags("a<!-- c > d -->b"), "a b");
        assert_eq!(strip_tags("x & y &bogus; <unclosed"), "x & y &bogus;");
        assert_eq!(strip_tags(""), "");
    }

    #[test]
    fn documents_carry_every_string_bounded() {
        let body = br#"{"resourceType":"Observation","id":"o.1","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z","tag":[{"system":"s","code":"t1","display":"Tag one"}]},
            "text":{"status":"generated","div":"<div><p>Glucose high</p></div>"},
            "status":"final","code":{"coding":[{"system":"http://loinc.org","code":"15074-8","display":"Glucose [Moles/volume] in Blood"}],"text":"Blood sugar"},
            "subject":{"reference":"Patient/p1"},"note":[{"text":"**fasting** sample"}],"valueQuantity":{"value":6.3,"unit":"mmol/L","code":"mmol/L"},
            "contained":[{"resourceType":"Patient","id":"c","text":{"div":"<div>Inner <i>story</i></div>"}}]}"#;
        let d = build("Observation", "o.1", 3, 1_700_000_000_123_456, body).unwrap();
        assert_eq!(d["key"], "Observation-o_1");
        assert_eq!(parse_key("Observation-o_1"), Some(("Observation", "o.1".to_string())));
        assert_eq!(d["lastUpdated"], 1_700_000_000_123u64);
        assert_eq!(d["versionId"], 3);
        assert_eq!(d["narrative"], "Glucose high");
        let list = |f: &str| d[f].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(list("codes"), ["t1", "15074-8", "mmol/L"]);
        assert_eq!(list("displays"), ["Tag one", "Glucose [Moles/volume] in Blood"]);
        let strings = list("strings");
        for s in ["final", "Blood sugar", "Patient/p1", "**fasting** sample", "Inner story", "http://loinc.org"] {
            assert!(strings.contains(&s.to_string()), "{s} in {strings:?}");
        }
        assert!(!strings.iter().any(|s| s.contains("2024-01-01") || s.contains("<div")), "{strings:?}");
        assert!(build("Patient", "x", 1, 0, b"not json").is_err());
    }

    #[test]
    fn huge_resources_make_bounded_documents() {
        let many: Vec<Value> = (0..10_000).map(|i| json!({"text": format!("note number {i} {}", "x".repeat(100))})).collect();
        let body = serde_json::to_vec(&json!({"resourceType": "Basic", "id": "b", "note": many, "text": {"div": format!("<div>{}</div>", "é".repeat(100_000))}})).unwrap();
        let d = build("Basic", "b", 1, 0, &body).unwrap();
        let bytes: usize = d["strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().len()).sum();
        assert!(bytes <= MAX_STRINGS_BYTES);
        assert_eq!(d["narrative"].as_str().unwrap().chars().count(), MAX_NARRATIVE_CHARS);
    }
}
