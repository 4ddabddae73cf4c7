//! Every key and value encoding of the `state` tree. Keys are order-preserving byte tuples:
//! resource types and ids never contain `\0`, numbers are big-endian.
//!
//! | key | value |
//! |---|---|
//! | `c` type `\0` id | [`Current`](super::Current): version u64, deleted u8, lastUpdated µs u64 |
//! | `v` type `\0` id `\0` version | [`VersionRecord`](super::VersionRecord): method u8, lastUpdated µs u64, body |
//! | `h` ts type `\0` id `\0` version | empty: system history, ordered by time |
//! | `t` type `\0` ts id `\0` version | empty: type history, ordered by time |
//! | `m` name | state-machine metadata (applied index, last timestamp, Raft conf state) |
//! | `mpeer` `\0` id | JSON [`PeerConfig`](crate::config::PeerConfig) of a member added at run time |
//! | `mtenant` `\0` name | empty: a tenant that has written |
//! | `0xFE` tenant `\0` key | any key above (and the index's) of a tenant other than the default ([`super::space`]) |

pub const CURRENT: u8 = b'c';
pub const VERSION: u8 = b'v';
pub const SYS_HISTORY: u8 = b'h';
pub const TYPE_HISTORY: u8 = b't';
pub const META: u8 = b'm';

pub const META_APPLIED: &[u8] = b"mapplied";
pub const META_LAST_TS: &[u8] = b"mlast_ts";
pub const META_CONF: &[u8] = b"mconf";
/// The index format (layout + FHIR version + search parameter fingerprint) the cluster is pinned
/// to, written by a replicated `Pin` command.
pub const META_PIN: &[u8] = b"mpin";
pub const META_PEER_PREFIX: &[u8] = b"mpeer\0";
/// `mtenant\0` name: a tenant that has written (its keys are behind [`super::space::prefix_of`]).
pub const META_TENANT_PREFIX: &[u8] = b"mtenant\0";

pub fn meta_tenant(name: &str) -> Vec<u8> {
    let mut k = META_TENANT_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn meta_peer(id: u64) -> Vec<u8> {
    let mut k = META_PEER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn tuple(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn current(rtype: &str, id: &str) -> Vec<u8> {
    tuple(CURRENT, &[rtype.as_bytes(), id.as_bytes()])
}

pub fn version(rtype: &str, id: &str, version: u64) -> Vec<u8> {
    tuple(VERSION, &[rtype.as_bytes(), id.as_bytes(), &version.to_be_bytes()])
}

/// Prefix of all versions of every resource of one type.
pub fn versions_of_type(rtype: &str) -> Vec<u8> {
    let mut k = tuple(VERSION, &[rtype.as_bytes()]);
    k.push(0);
    k
}

/// Prefix of all versions of one resource.
pub fn versions_of(rtype: &str, id: &str) -> Vec<u8> {
    let mut k = tuple(VERSION, &[rtype.as_bytes(), id.as_bytes()]);
    k.push(0);
    k
}

pub fn sys_history(ts: u64, rtype: &str, id: &str, version: u64) -> Vec<u8> {
    let mut k = vec![SYS_HISTORY];
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&tuple(0, &[rtype.as_bytes(), id.as_bytes(), &version.to_be_bytes()])[1..]);
    k
}

pub fn type_history_prefix(rtype: &str) -> Vec<u8> {
    let mut k = tuple(TYPE_HISTORY, &[rtype.as_bytes()]);
    k.push(0);
    k
}

pub fn type_history(rtype: &str, ts: u64, id: &str, version: u64) -> Vec<u8> {
    let mut k = type_history_prefix(rtype);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&tuple(0, &[id.as_bytes(), &version.to_be_bytes()])[1..]);
    k
}

/// A decoded history key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKey {
    pub ts: u64,
    pub rtype: String,
    pub id: String,
    pub version: u64,
}

fn split_tail(rest: &[u8]) -> Option<(&[u8], u64)> {
    // rest = name `\0` version(8)
    if rest.len() < 9 || rest[rest.len() - 9] != 0 {
        return None;
    }
    let (name, v) = rest.split_at(rest.len() - 9);
    Some((name, u64::from_be_bytes(v[1..].try_into().ok()?)))
}

fn text(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

/// Decodes a `c` key: (type, id).
pub fn decode_current(k: &[u8]) -> Option<(String, String)> {
    let rest = k.get(1..)?;
    let sep = rest.iter().position(|b| *b == 0)?;
    Some((text(&rest[..sep])?, text(&rest[sep + 1..])?))
}

/// Decodes a `h` key.
pub fn decode_sys_history(k: &[u8]) -> Option<HistoryKey> {
    let ts = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let rest = k.get(9..)?;
    let (type_and_id, version) = split_tail(rest)?;
    let sep = type_and_id.iter().position(|b| *b == 0)?;
    Some(HistoryKey { ts, rtype: text(&type_and_id[..sep])?, id: text(&type_and_id[sep + 1..])?, version })
}

/// Decodes a `t` key.
pub fn decode_type_history(k: &[u8]) -> Option<HistoryKey> {
    let sep = k.iter().position(|b| *b == 0)?;
    let rtype = text(k.get(1..sep)?)?;
    let ts = u64::from_be_bytes(k.get(sep + 1..sep + 9)?.try_into().ok()?);
    let (id, version) = split_tail(k.get(sep + 9..)?)?;
    Some(HistoryKey { ts, rtype, id: text(id)?, version })
}

/// Decodes a `v` key.
pub fn decode_version(k: &[u8]) -> Option<(String, String, u64)> {
    let (type_and_id, version) = split_tail(k.get(1..)?)?;
    let sep = type_and_id.iter().position(|b| *b == 0)?;
    Some((text(&type_and_id[..sep])?, text(&type_and_id[sep + 1..])?, version))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_round_trip_and_order_by_time() {
        let a = sys_history(5, "Patient", "x", 2);
        let b = sys_history(6, "Observation", "a", 1);
        assert!(a < b);
        assert_eq!(decode_sys_history(&a).unwrap(), HistoryKey { ts: 5, rtype: "Patient".into(), id: "x".into(), version: 2 });
        let t = type_history("Patient", 7, "p-1", 300);
        assert!(t.starts_with(&type_history_prefix("Patient")));
        assert!(!t.starts_with(&type_history_prefix("Pat")));
        assert_eq!(decode_type_history(&t).unwrap(), HistoryKey { ts: 7, rtype: "Patient".into(), id: "p-1".into(), version: 300 });
    }

    #[test]
    fn versions_sort_numerically_and_stay_in_their_resource() {
        assert!(version("Patient", "a", 2) < version("Patient", "a", 10));
        assert!(version("Patient", "a", 10).starts_with(&versions_of("Patient", "a")));
        assert!(!version("Patient", "ab", 1).starts_with(&versions_of("Patient", "a")));
        assert_eq!(decode_version(&version("Patient", "a.b", 7)).unwrap(), ("Patient".into(), "a.b".into(), 7));
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(decode_current(&current("Patient", "a-1")).unwrap(), ("Patient".into(), "a-1".into()));
    }
}
