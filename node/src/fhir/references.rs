//! Finding and rewriting the references inside a resource: every `reference` string (at any depth,
//! extensions and contained resources included) and the `href` / `src` attributes of narrative
//! `div`s. Transactions use it to replace `urn:uuid:` placeholders and conditional references by
//! the `Type/id` they resolve to.

use serde_json::Value;

/// Calls `f` on every reference in `v`; where it answers `Some(new)`, the reference becomes `new`.
/// Stops at the first error of `f`. Returns whether anything changed.
pub fn rewrite<E>(v: &mut Value, f: &mut impl FnMut(&str) -> Result<Option<String>, E>) -> Result<bool, E> {
    let mut changed = false;
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => {
                        if let Some(new) = f(s)? {
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
fn rewrite_xhtml<E>(div: &str, f: &mut impl FnMut(&str) -> Result<Option<String>, E>) -> Result<Option<String>, E> {
    let mut out = String::with_capacity(div.len());
    let mut rest = div;
    let mut changed = false;
    while let Some(pos) = next_attribute(rest) {
        let (attr_end, quote) = pos;
        out.push_str(&rest[..attr_end]);
        let value_start = attr_end;
        let Some(len) = rest[value_start..].find(quote) else { break };
        let value = &rest[value_start..value_start + len];
        match f(value)? {
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

    fn map(s: &str) -> Result<Option<String>, ()> {
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
    }

    #[test]
    fn errors_stop_the_walk() {
        let mut v = json!({"a": {"reference": "bad"}});
        let r: Result<bool, String> = rewrite(&mut v, &mut |s: &str| if s == "bad" { Err(format!("no {s}")) } else { Ok(None) });
        assert_eq!(r.unwrap_err(), "no bad");
    }
}
