//! Rebuilding the embedded search index from the stored resources when the index on disk was
//! written in another layout (an older Kiln) or for other search parameters. It runs when a node
//! opens its state or installs a snapshot, before Raft applies anything further. Doc numbers are
//! assigned in the order the log first wrote each resource (the type history, by timestamp,
//! deleted resources included), which is the order applying the log assigns them: nodes that
//! rebuild at different applied indexes still agree on every number and write the same bytes.

use serde_json::Value;

use super::state_machine::StateMachine;
use crate::store::writes::Writes;
use crate::store::{keys, Current, StoreError, VersionRecord};
use crate::search::{index, posting};

/// Stored with the index: its layout version and the parameter set it was built for.
pub const FORMAT_KEY: &[u8] = b"mindex_format";
/// Bumped whenever the row or posting layout changes, or what a condition can say (8: the
/// `_in-compartment` criterion of patient/ scopes: a replica without it would decide such a
/// condition differently, so the pin stops a mixed cluster; 9: reverse lists front-coded).
const LAYOUT: u32 = 9;
/// Resources re-indexed per sled batch.
const CHUNK: usize = 1_000;

impl StateMachine {
    /// The format string this binary writes for its registry (`None` without a search index).
    pub(super) fn index_format(&self) -> Option<String> {
        self.search.as_ref().map(|reg| format!("{LAYOUT}:{}", reg.fingerprint))
    }

    /// Rebuilds the index if it was not written by this layout for these parameters. Returns how
    /// many resources were re-indexed (`None`: the index was current).
    pub fn ensure_index(&mut self) -> Result<Option<usize>, StoreError> {
        let Some(want) = self.index_format() else { return Ok(None) };
        if self.tree.get(FORMAT_KEY)?.as_deref() == Some(want.as_bytes()) {
            return Ok(None);
        }
        let mut count = 0;
        let tenants: Vec<Option<String>> = std::iter::once(None).chain(self.tenants()?.into_iter().map(Some)).collect();
        for tenant in tenants {
            self.space = crate::store::space::Space::of(self.tree.clone(), tenant.as_deref());
            let rebuilt = self.rebuild_space();
            self.space = crate::store::space::Space::root(self.tree.clone());
            count += rebuilt?;
        }
        let mut w = Writes::default();
        w.insert_meta(FORMAT_KEY, want.as_bytes());
        self.write(w)?;
        tracing::info!(resources = count, "search index rebuilt");
        Ok(Some(count))
    }

    /// Rebuilds the index of the current tenant's space; returns how many resources it indexed.
    fn rebuild_space(&mut self) -> Result<usize, StoreError> {
        for prefix in [&[index::ROW][..], &[index::REVERSE], &[posting::DOCNUM], &[posting::DOC_ID], posting::COUNTER] {
            let mut batch = Writes::in_space(self.space.prefix());
            for (n, k) in self.space.scan_prefix(prefix).enumerate() {
                batch.remove(k?.0);
                if n % 10_000 == 9_999 {
                    self.write(std::mem::replace(&mut batch, Writes::in_space(self.space.prefix())))?;
                }
            }
            self.write(batch)?;
        }
        // Doc numbers first, in first-write order per type.
        let mut staged = self.stage(0);
        for (n, k) in self.space.scan_prefix([keys::TYPE_HISTORY]).enumerate() {
            let k = k?.0;
            let h = keys::decode_type_history(&k).ok_or_else(|| StoreError::Corrupt("type history key".into()))?;
            staged.assign_docnum(&self.space, &h.rtype, &h.id)?;
            if n % (10 * CHUNK) == 10 * CHUNK - 1 {
                self.write_index(std::mem::replace(&mut staged, self.stage(0)))?;
            }
        }
        self.write_index(std::mem::replace(&mut staged, self.stage(0)))?;
        // Then the rows of every live resource.
        let mut count = 0;
        for item in self.space.clone().scan_prefix([keys::CURRENT]) {
            let (k, v) = item?;
            let cur = Current::decode(&v)?;
            if cur.deleted {
                continue;
            }
            let (rtype, id) = keys::decode_current(&k).ok_or_else(|| StoreError::Corrupt("current pointer key".into()))?;
            let record = self.space.get(keys::version(&rtype, &id, cur.version))?.ok_or_else(|| StoreError::Corrupt(format!("{rtype}/{id} has no version {}", cur.version)))?;
            let body: Value = serde_json::from_slice(VersionRecord::decode(record)?.body()).map_err(|e| StoreError::Corrupt(format!("{rtype}/{id}: {e}")))?;
            let reg = self.search.clone().expect("checked above");
            self.replace_index_rows(&rtype, &id, index::rows(&reg, &rtype, &body), &mut staged)?;
            count += 1;
            if count % CHUNK == 0 {
                self.write_index(std::mem::replace(&mut staged, self.stage(0)))?;
            }
        }
        self.write_index(staged)?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::query::{parse, Executor};
    use crate::machine::command::{Action, Command, CommandV1, WriteOp};

    /// A PUT of Patient `id` with one family name.
    fn put(id: &str, family: &str) -> WriteOp {
        WriteOp {
            action: Action::Update,
            rtype: "Patient".into(),
            id: id.into(),
            body: Some(format!(r#"{{"resourceType":"Patient","id":"{id}","name":[{{"family":"{family}"}}]}}"#)),
            if_match: None,
            allow_create: true,
        }
    }

    #[test]
    fn an_index_in_another_format_is_rebuilt_the_same_way() {
        let crate::machine::testing::Indexed { dir: _dir, tree, reg, mut sm } = crate::machine::testing::indexed();
        assert_eq!(sm.ensure_index().unwrap(), Some(0), "a new store records its format");
        assert_eq!(sm.ensure_index().unwrap(), None);
        let del = WriteOp { action: Action::Delete, body: None, ..put("b", "") };
        let ops = vec![put("c", "Smith"), put("a", "Smith"), put("b", "Smith"), del, put("d", "Jones")];
        sm.apply(1, 1, &Command::V1(CommandV1::Writes { ts_micros: 1, ops }).encode()).unwrap();
        let search = |qs: &str| {
            let params: Vec<(String, String)> = serde_urlencoded::from_str(qs).unwrap();
            Executor { tree: &tree, rtype: "Patient" }.run_ids(&parse(&reg, "Patient", &params, false).unwrap()).unwrap()
        };
        assert_eq!(search("family=smith"), ["c", "a"]);
        // An older layout: a stale row, no format key. Opening rebuilds from the resources.
        tree.insert(b"xPatient\0family\0lstale\0\0\0\0\0", &[0u8, 0, 0][..]).unwrap();
        tree.remove(FORMAT_KEY).unwrap();
        let mut sm = StateMachine::open(tree.tree().clone()).unwrap().with_search(reg.clone());
        assert_eq!(sm.ensure_index().unwrap(), Some(3), "live resources re-indexed");
        assert!(tree.get(b"xPatient\0family\0lstale\0\0\0\0\0").unwrap().is_none());
        // The same doc numbers as applying the log gave: first-write order (c, a, b, d).
        assert_eq!(search("family=smith"), ["c", "a"]);
        assert_eq!(search(""), ["c", "a", "d"]);
        assert_eq!(crate::search::posting::docnum(&tree, "Patient", "d").unwrap(), Some(3), "the deleted b kept its number");
        assert_eq!(search("family=jones"), ["d"]);
    }

    #[test]
    fn every_tenant_is_rebuilt_in_its_own_space() {
        let crate::machine::testing::Indexed { dir: _dir, tree, reg, mut sm } = crate::machine::testing::indexed();
        sm.apply(1, 1, &Command::V1(CommandV1::Writes { ts_micros: 1, ops: vec![put("a", "Root")] }).encode()).unwrap();
        let acme = Command::V1(CommandV1::Writes { ts_micros: 2, ops: vec![put("a", "Acme")] }).in_tenant(Some("acme"));
        sm.apply(2, 1, &acme.encode()).unwrap();
        assert_eq!(sm.tenants().unwrap(), ["acme"]);
        let search = |space: &crate::store::space::Space, qs: &str| {
            let params: Vec<(String, String)> = serde_urlencoded::from_str(qs).unwrap();
            Executor { tree: space, rtype: "Patient" }.run_ids(&parse(&reg, "Patient", &params, false).unwrap()).unwrap()
        };
        let acme_space = tree.with_tenant(Some("acme"));
        assert_eq!(search(&acme_space, "family=acme"), ["a"]);
        assert!(search(&tree, "family=acme").is_empty());
        tree.remove(FORMAT_KEY).unwrap();
        let mut sm = StateMachine::open(tree.tree().clone()).unwrap().with_search(reg.clone());
        assert_eq!(sm.ensure_index().unwrap(), Some(2), "both tenants' resources re-indexed");
        assert_eq!(search(&acme_space, "family=acme"), ["a"]);
        assert_eq!(search(&tree, "family=root"), ["a"]);
        assert!(search(&acme_space, "family=root").is_empty());
    }
}
