//! `_content` and `_text` (search.html): answered by Meilisearch, ANDed with the rest of the
//! query by the caller. `_text` searches the narrative only, `_content` every field of the
//! document. Each parameter is one Meilisearch search of the tenant's index filtered on the
//! resource type, taking at most `max_hits` matches (more: 400 too-costly, never a silent cut);
//! several text parameters AND (the score of a match is then the lowest of its scores).

use std::collections::HashMap;

use serde::Deserialize;

use super::{status, Meili, MeiliError};

/// The text parameters Kiln forwards.
pub const TEXT_PARAMS: &[&str] = &["_content", "_text"];

/// Whether `name` is a text parameter (with or without a modifier).
pub fn is_text_param(name: &str) -> bool {
    TEXT_PARAMS.contains(&name.split(':').next().unwrap_or(name))
}

#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "resourceType")]
    rtype: String,
    id: String,
}

/// Text matches: type → id → relevance score (0..1).
pub type TextMatches = HashMap<String, HashMap<String, f64>>;

/// The resources of `types` matching every text parameter in `params`, with their relevance
/// score. One Meilisearch search per text parameter, whatever the number of types (a filter on
/// `resourceType`). `Ok(None)` when there is no text parameter.
pub async fn matches(m: &Meili, tree: &sled::Tree, tenant: Option<&str>, types: &[&str], params: &[(String, String)]) -> Result<Option<TextMatches>, MeiliError> {
    let text: Vec<&(String, String)> = params.iter().filter(|(k, _)| is_text_param(k)).collect();
    if text.is_empty() {
        return Ok(None);
    }
    validate(&text, types)?;
    status::check_lag(tree, tenant, m.cfg.max_lag_ms)?;
    let uid = m.cfg.index_uid(tenant);
    let index = m.client().index(&uid);
    let filter = match types {
        [one] => format!("resourceType = \"{one}\""),
        many => format!("resourceType IN [{}]", many.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")),
    };
    let mut out: Option<HashMap<(String, String), f64>> = None;
    let (narrative, retrieve) = (["narrative"], ["resourceType", "id"]);
    for (name, value) in text {
        let mut q = index.search();
        q.with_query(value).with_filter(&filter).with_limit(m.cfg.max_hits + 1).with_show_ranking_score(true).with_attributes_to_retrieve(meilisearch_sdk::search::Selectors::Some(&retrieve));
        if name == "_text" {
            q.with_attributes_to_search_on(&narrative);
        }
        let found = match tokio::time::timeout(m.timeout(), q.execute::<Hit>()).await {
            Ok(Ok(r)) => r,
            Ok(Err(meilisearch_sdk::errors::Error::Meilisearch(e))) if e.error_code == meilisearch_sdk::errors::ErrorCode::IndexNotFound => {
                // No index yet: nothing of this tenant was ever indexed (the lag check passed).
                return Ok(Some(TextMatches::new()));
            }
            Ok(Err(e)) => return Err(m.classify(e)),
            Err(_) => return Err(MeiliError::Unavailable { url: m.url.clone(), reason: format!("no answer within {} ms", m.cfg.timeout_ms) }),
        };
        if found.hits.len() > m.cfg.max_hits {
            return Err(MeiliError::TooMany { param: name.clone(), value: value.clone(), max: m.cfg.max_hits });
        }
        let these: HashMap<(String, String), f64> = found.hits.into_iter().map(|h| ((h.result.rtype, h.result.id), h.ranking_score.unwrap_or(0.0))).collect();
        out = Some(match out {
            None => these,
            Some(prev) => prev.into_iter().filter_map(|(k, s)| these.get(&k).map(|t| (k, s.min(*t)))).collect(),
        });
    }
    let mut by_type = TextMatches::new();
    for ((t, id), s) in out.unwrap_or_default() {
        by_type.entry(t).or_default().insert(id, s);
    }
    Ok(Some(by_type))
}

fn validate(text: &[&(String, String)], types: &[&str]) -> Result<(), MeiliError> {
    for (name, value) in text {
        if name.contains(':') {
            return Err(MeiliError::BadValue { param: name.clone(), reason: "_content and _text take no modifier".into() });
        }
        if value.trim().is_empty() {
            return Err(MeiliError::BadValue { param: name.clone(), reason: "empty value".into() });
        }
        if value.len() > 1024 {
            return Err(MeiliError::BadValue { param: name.clone(), reason: "longer than 1024 bytes".into() });
        }
    }
    if let Some(t) = types.iter().find(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(MeiliError::BadValue { param: "_type".into(), reason: format!("{t:?} is not a resource type") });
    }
    Ok(())
}

/// One page of a search whose only criterion is ONE text parameter on one type, in relevance
/// order, paged inside Meilisearch (only the page's hits travel): `count` matches from `offset`
/// with their scores, and the exact number of matches. Past `max_hits` matches: too costly, as
/// for [`matches`].
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than the workspace's rust-version
pub async fn page(m: &Meili, tree: &sled::Tree, tenant: Option<&str>, rtype: &str, param: &(String, String), offset: usize, count: usize) -> Result<(Vec<(String, f64)>, usize), MeiliError> {
    validate(&[param], &[rtype])?;
    let (name, value) = (param.0.as_str(), param.1.as_str());
    if offset.saturating_add(count) > m.cfg.max_hits {
        return Err(MeiliError::TooDeep { max: m.cfg.max_hits });
    }
    status::check_lag(tree, tenant, m.cfg.max_lag_ms)?;
    let index = m.client().index(m.cfg.index_uid(tenant));
    let filter = format!("resourceType = \"{rtype}\"");
    let (narrative, retrieve) = (["narrative"], ["resourceType", "id"]);
    let mut q = index.search();
    q.with_query(value).with_filter(&filter).with_show_ranking_score(true).with_attributes_to_retrieve(meilisearch_sdk::search::Selectors::Some(&retrieve));
    // Page mode counts the matches exactly; it needs the offset to fall on a page boundary.
    let paged = count > 0 && offset % count == 0;
    if paged {
        q.with_page(offset / count + 1).with_hits_per_page(count);
    } else {
        q.with_offset(offset).with_limit(count);
    }
    if name == "_text" {
        q.with_attributes_to_search_on(&narrative);
    }
    let found = match tokio::time::timeout(m.timeout(), q.execute::<Hit>()).await {
        Ok(Ok(r)) => r,
        Ok(Err(meilisearch_sdk::errors::Error::Meilisearch(e))) if e.error_code == meilisearch_sdk::errors::ErrorCode::IndexNotFound => return Ok((Vec::new(), 0)),
        Ok(Err(e)) => return Err(m.classify(e)),
        Err(_) => return Err(MeiliError::Unavailable { url: m.url.clone(), reason: format!("no answer within {} ms", m.cfg.timeout_ms) }),
    };
    let total = found.total_hits.or(found.estimated_total_hits).unwrap_or(0);
    if total > m.cfg.max_hits {
        return Err(MeiliError::TooMany { param: name.to_string(), value: value.to_string(), max: m.cfg.max_hits });
    }
    Ok((found.hits.into_iter().map(|h| (h.result.id, h.ranking_score.unwrap_or(0.0))).collect(), total))
}

/// The sort key of a relevance-ordered match: score descending, then doc number, then type
/// (prefix-free per type, like the keys of `search::sort`).
pub fn score_key(score: f64, doc: u32, rtype: &str) -> Vec<u8> {
    let s = if score.is_finite() && score > 0.0 { score } else { 0.0 };
    let mut k = (!s.to_bits()).to_be_bytes().to_vec();
    k.extend_from_slice(&doc.to_be_bytes());
    k.extend_from_slice(rtype.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_keys_order_by_relevance_then_doc() {
        let mut keys = vec![score_key(0.5, 1, "P"), score_key(0.9, 7, "P"), score_key(0.5, 0, "P"), score_key(f64::NAN, 3, "P"), score_key(1.0, 9, "P")];
        keys.sort();
        assert_eq!(keys, vec![score_key(1.0, 9, "P"), score_key(0.9, 7, "P"), score_key(0.5, 0, "P"), score_key(0.5, 1, "P"), score_key(0.0, 3, "P")]);
        assert!(is_text_param("_content") && is_text_param("_text:exact") && !is_text_param("_id"));
    }
}
