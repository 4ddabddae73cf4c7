//! Finding and rewriting the references inside a resource: every `reference` string (at any depth,
//! extensions and contained resources included) and the `href` / `src` attributes of narrative
//! `div`s. Transactions use it to replace `urn:uuid:` placeholders and conditional references by
//! the `Type/id` they resolve to. A Bundle inside the resource (or the resource itself being a
//! Bundle) is left alone: its references are relative to its own entries.

use serde_json::Value;

/// Where a reference was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A `reference` element.
    Element,
    /// An `href` / `src` attribute of the narrative.
    Narrative,
}

/// Calls `f` on every reference in `v`; where it answers `Some(new)`, the reference becomes `new`.
/// Stops at the first error of `f`. Returns whether anything changed.
pub fn rewrite<E>(v: &mut Value, f: &mut impl FnMut(&str, Place) -> Result<Option<String>, E>) -> Result<bool, E> {
    let mut changed = false;
    match v {
        Value::Object(map) => {
            if map.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                return Ok(false);
            }
            for (k, child) in map.iter_mut() {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => {
                        if let Some(new) = f(s, Place::Element)? {
                            *s = new;
                            changed = true;
                        }
                    }
                    ("div", Value::String(s)) => {
                        if let Some(new) = rewrite_xhtml(s, f)? {
                            *s = new;
                            changed = true;
                        }
                    }
                    (_, child) => changed |= rewrite(child, f)?,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                changed |= rewrite(item, f)?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// Rewrites `href="…"` and `src="…"` attribute values of a narrative (either quote style).
fn rewrite_xhtml<E>(div: &str, f: &mut impl FnMut(&str, Place) -> Result<Option<String>, E>) -> Result<Option<String>, E> {
    let mut out = String::with_capacity(div.len());
    let mut rest = div;
    let mut changed = false;
    while let Some(pos) = next_attribute(rest) {
        let (value_start, quote) = pos;
        // An unterminated value: nothing more to rewrite.
        let Some(len) = rest[value_start..].find(quote) else { break };
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..value_start + len];
        match f(value, Place::Narrative)? {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(value),
        }
        rest = &rest[value_start + len..];
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

/// The offset just after the opening quote of the next `href=` / `src=` attribute, and its quote.
fn next_attribute(s: &str) -> Option<(usize, char)> {
    let bytes = s.as_bytes();
    let mut best: Option<(usize, char)> = None;
    for name in ["href", "src"] {
        let mut from = 0;
        while let Some(i) = s[from..].find(name) {
            let at = from + i;
            from = at + name.len();
            // A whole attribute name: preceded by whitespace.
            if at == 0 || !bytes[at - 1].is_ascii_whitespace() {
                continue;
            }
            let after = s[from..].trim_start();
            let Some(after_eq) = after.strip_prefix('=') else { continue };
            let after_eq = after_eq.trim_start();
            let Some(q) = after_eq.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
            let start = s.len() - after_eq.len() + 1;
            if best.is_none_or(|(b, _)| start < b) {
                best = Some((start, q));
            }
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(s: &str, _: Place) -> Result<Option<String>, ()> {
        Ok(match s {
            "urn:uuid:1" => Some("Patient/p1".into()),
            "urn:uuid:2" => Some("Practitioner/d2".into()),
            _ => None,
        })
    }

    #[test]
    fn rewrites_references_at_any_depth_and_in_the_narrative() {
        let mut v = json!({
            "resourceType": "Observation",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:1\">p</a><img src='urn:uuid:2'/><a href=\"other\">x</a></div>"},
            "subject": {"reference": "urn:uuid:1"},
            "performer": [{"reference": "urn:uuid:2"}, {"reference": "Organization/o"}],
            "extension": [{"url": "x", "valueReference": {"reference": "urn:uuid:2"}}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:1"}]}]
        });
        assert!(rewrite(&mut v, &mut map).unwrap());
        assert_eq!(v["subject"]["reference"], "Patient/p1");
        assert_eq!(v["performer"][0]["reference"], "Practitioner/d2");
        assert_eq!(v["performer"][1]["reference"], "Organization/o");
        assert_eq!(v["extension"][0]["valueReference"]["reference"], "Practitioner/d2");
        assert_eq!(v["contained"][0]["target"][0]["reference"], "Patient/p1");
        let div = v["text"]["div"].as_str().unwrap();
        assert!(div.contains("href=\"Patient/p1\"") && div.contains("src='Practitioner/d2'") && div.contains("href=\"other\""), "{div}");
        let mut untouched = json!({"subject": {"reference": "Patient/x"}});
        assert!(!rewrite(&mut untouched, &mut map).unwrap());
        // A Bundle inside (a document in a Parameters, or the resource itself) is left alone.
        let mut nested = json!({"resourceType": "Parameters", "parameter": [{"resource": {"resourceType": "Bundle", "entry": [{"resource": {"subject": {"reference": "urn:uuid:1"}}}]}}]});
        assert!(!rewrite(&mut nested, &mut map).unwrap());
        // An unterminated attribute value keeps the text as it was.
        let mut broken = json!({"div": "<div><a href=\"urn:uuid:1\">x</a> src=\"oops</div>"});
        assert!(rewrite(&mut broken, &mut map).unwrap());
        assert_eq!(broken["div"], "<div><a href=\"Patient/p1\">x</a> src=\"oops</div>");
    }

    #[test]
    fn errors_stop_the_walk() {
        let mut v = json!({"a": {"reference": "bad"}});
        let r: Result<bool, String> = rewrite(&mut v, &mut |s: &str, _| if s == "bad" { Err(format!("no {s}")) } else { Ok(None) });
        assert_eq!(r.unwrap_err(), "no bad");
    }
}
