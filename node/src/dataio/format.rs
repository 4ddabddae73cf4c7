//! The backup file: what `GET /_cluster/backup` streams and `kiln backup` stores, byte for byte.
//!
//! ```text
//! "KILNBAK1"                                   8 bytes
//! u32 n, n bytes of JSON Header                index, term, node_id, fhir_version, created
//! pairs: u32 key len, key, u32 value len, value    the Raft snapshot chunk encoding (store::snapshot)
//! u32 0xFFFF_FFFF                              end of pairs (no key is 4 GiB long)
//! u64 pair count
//! 32 bytes: data digest                        store::snapshot::digests' data_sha256 of the pairs
//! 32 bytes: SHA-256 of every byte before these 32
//! ```
//!
//! Numbers are big-endian. The pairs are the `state` tree at the header's applied index, in key
//! order. The data digest is the one `/_cluster/digest` reports as `data_sha256`, so a restored
//! cluster can be compared with the backup. A reader ([`Reader`]) trusts nothing: lengths are
//! bounded, the trailer's counts and digests are recomputed and compared, and bytes after the
//! trailer are an error.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::snapshot::{is_consensus_meta, PairHasher};

pub const MAGIC: &[u8; 8] = b"KILNBAK1";
const END: u32 = u32::MAX;
/// Largest header accepted.
const MAX_HEADER: usize = 64 * 1024;
/// Largest key accepted (keys are type/id tuples and index rows: a few hundred bytes).
const MAX_KEY: usize = 64 * 1024;
/// Largest value accepted (a stored version is at most a log entry).
const MAX_VALUE: usize = 1024 * 1024 * 1024;

/// One key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A malformed or tampered backup.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a Kiln backup (bad magic)")]
    Magic,
    #[error("header: {0}")]
    Header(String),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("a key of {0} bytes is longer than any Kiln key")]
    KeyTooLong(usize),
    #[error("a value of {0} bytes is larger than any Kiln value")]
    ValueTooLong(usize),
    #[error("keys are not in strictly increasing order")]
    Order,
    #[error("the trailer says {claimed} pairs, the file holds {counted}")]
    Count { claimed: u64, counted: u64 },
    #[error("digest mismatch ({what}): the file is corrupt or was altered")]
    Digest { what: &'static str },
    #[error("bytes after the trailer")]
    Trailing,
    #[error("read failed: {0}")]
    Io(String),
}

/// What the backup is a copy of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Applied index the pairs reflect, and its term.
    pub index: u64,
    pub term: u64,
    /// The node that streamed it.
    pub node_id: u64,
    pub fhir_version: String,
    /// RFC 3339 time the capture started.
    pub created: String,
}

/// The writing side: feed it the header, the snapshot chunks, then take the trailer. Every
/// byte it returns is hashed into the trailer.
pub struct Encoder {
    file: Sha256,
    data: PairHasher,
    pairs: u64,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { file: Sha256::new(), data: PairHasher::default(), pairs: 0 }
    }
}

impl Encoder {
    pub fn header(&mut self, h: &Header) -> Vec<u8> {
        let json = serde_json::to_vec(h).unwrap_or_default();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        self.file.update(&out);
        out
    }

    /// Accounts for one snapshot chunk (`store::snapshot` encoding), which goes out unchanged.
    pub fn chunk(&mut self, chunk: &[u8]) -> Result<(), crate::store::StoreError> {
        for (k, v) in crate::store::snapshot::pairs(chunk)? {
            if !is_consensus_meta(k) {
                self.data.update(k, v);
            }
            self.pairs += 1;
        }
        self.file.update(chunk);
        Ok(())
    }

    pub fn trailer(mut self) -> Vec<u8> {
        let mut out = END.to_be_bytes().to_vec();
        out.extend_from_slice(&self.pairs.to_be_bytes());
        out.extend_from_slice(&hex::decode(self.data.finish()).unwrap_or_default());
        self.file.update(&out);
        out.extend_from_slice(&self.file.finalize());
        out
    }
}

/// What a complete, verified file held.
#[derive(Debug, Clone)]
pub struct Summary {
    pub pairs: u64,
    /// Hex data digest (equal to `data_sha256` of `/_cluster/digest` on a restored node).
    pub data_sha256: String,
    /// Hex SHA-256 of the whole file.
    pub file_sha256: String,
    pub bytes: u64,
}

/// Reads and checks a backup from any byte source; [`Reader::next_pair`] until `None`, which
/// comes only after the trailer verified.
pub struct Reader<R: Read> {
    src: R,
    file: Sha256,
    data: PairHasher,
    pairs: u64,
    bytes: u64,
    last_key: Option<Vec<u8>>,
    done: Option<Summary>,
}

impl<R: Read> Reader<R> {
    /// Reads the magic and the header.
    pub fn open(src: R) -> Result<(Header, Reader<R>), FormatError> {
        let mut r = Reader { src, file: Sha256::new(), data: PairHasher::default(), pairs: 0, bytes: 0, last_key: None, done: None };
        let magic = r.exact(8, "magic")?;
        if magic != MAGIC {
            return Err(FormatError::Magic);
        }
        let n = r.u32("header length")? as usize;
        if n > MAX_HEADER {
            return Err(FormatError::Header(format!("{n} bytes")));
        }
        let json = r.exact(n, "header")?;
        let header: Header = serde_json::from_slice(&json).map_err(|e| FormatError::Header(e.to_string()))?;
        Ok((header, r))
    }

    fn exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>, FormatError> {
        let mut buf = Vec::new();
        (&mut self.src).take(n as u64).read_to_end(&mut buf).map_err(|e| FormatError::Io(e.to_string()))?;
        if buf.len() != n {
            return Err(FormatError::Truncated(format!("{what}: {} of {n} bytes", buf.len())));
        }
        self.file.update(&buf);
        self.bytes += n as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let b = self.exact(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| FormatError::Truncated(what.into()))?))
    }

    /// The next pair, or `None` once the trailer was read and verified.
    pub fn next_pair(&mut self) -> Result<Option<Pair>, FormatError> {
        if self.done.is_some() {
            return Ok(None);
        }
        let klen = self.u32("key length")?;
        if klen == END {
            self.finish()?;
            return Ok(None);
        }
        let klen = klen as usize;
        if klen > MAX_KEY {
            return Err(FormatError::KeyTooLong(klen));
        }
        let key = self.exact(klen, "key")?;
        let vlen = self.u32("value length")? as usize;
        if vlen > MAX_VALUE {
            return Err(FormatError::ValueTooLong(vlen));
        }
        let value = self.exact(vlen, "value")?;
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(FormatError::Order);
        }
        if !is_consensus_meta(&key) {
            self.data.update(&key, &value);
        }
        self.pairs += 1;
        self.last_key = Some(key.clone());
        Ok(Some((key, value)))
    }

    fn finish(&mut self) -> Result<(), FormatError> {
        let count = u64::from_be_bytes(self.exact(8, "pair count")?.try_into().map_err(|_| FormatError::Truncated("count".into()))?);
        let data = self.exact(32, "data digest")?;
        let file_so_far = self.file.clone().finalize();
        let mut claimed = [0u8; 32];
        let mut got = 0;
        while got < 32 {
            match self.src.read(&mut claimed[got..]) {
                Ok(0) => return Err(FormatError::Truncated("file digest".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::Io(e.to_string())),
            }
        }
        self.file.update(claimed);
        self.bytes += 32;
        if count != self.pairs {
            return Err(FormatError::Count { claimed: count, counted: self.pairs });
        }
        if file_so_far.as_slice() != claimed {
            return Err(FormatError::Digest { what: "file" });
        }
        let data_hex = std::mem::take(&mut self.data).finish();
        if hex::encode(&data) != data_hex {
            return Err(FormatError::Digest { what: "data" });
        }
        let mut extra = [0u8; 1];
        loop {
            match self.src.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(FormatError::Trailing),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::Io(e.to_string())),
            }
        }
        let file_sha256 = hex::encode(std::mem::take(&mut self.file).finalize());
        self.done = Some(Summary { pairs: self.pairs, data_sha256: data_hex, file_sha256, bytes: self.bytes });
        Ok(())
    }

    /// After `next_pair` returned `None`: what the file held.
    pub fn summary(&self) -> Option<&Summary> {
        self.done.as_ref()
    }

    /// Reads every pair (checking them all) and returns the summary.
    pub fn verify_all(mut self) -> Result<Summary, FormatError> {
        while self.next_pair()?.is_some() {}
        self.done.ok_or_else(|| FormatError::Truncated("no trailer".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::snapshot::chunk_of;

    fn sample() -> (Header, Vec<u8>) {
        let h = Header { index: 42, term: 3, node_id: 1, fhir_version: "4.0.1".into(), created: "2026-01-01T00:00:00Z".into() };
        let mut e = Encoder::default();
        let mut out = e.header(&h);
        let a = chunk_of([(b"a".as_slice(), b"1".as_slice()), (b"b", b"22")]);
        let b = chunk_of([(b"mapplied".as_slice(), [0u8; 16].as_slice()), (b"z", b"")]);
        for c in [&a, &b, &Vec::new()] {
            e.chunk(c).unwrap();
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&e.trailer());
        (h, out)
    }

    #[test]
    fn a_file_round_trips_and_its_digests_check() {
        let (h, bytes) = sample();
        let (got, mut r) = Reader::open(bytes.as_slice()).unwrap();
        assert_eq!(got, h);
        let mut keys = Vec::new();
        while let Some((k, _)) = r.next_pair().unwrap() {
            keys.push(k);
        }
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"mapplied".to_vec(), b"z".to_vec()]);
        let s = r.summary().unwrap();
        assert_eq!((s.pairs, s.bytes), (4, bytes.len() as u64));
        assert_eq!(s.file_sha256, hex::encode(Sha256::digest(&bytes)));
        // The data digest leaves the consensus metadata out, like /_cluster/digest's data_sha256.
        let mut d = PairHasher::default();
        for (k, v) in [(b"a".as_slice(), b"1".as_slice()), (b"b", b"22"), (b"z", b"")] {
            d.update(k, v);
        }
        assert_eq!(s.data_sha256, d.finish());
    }

    #[test]
    fn every_damage_is_detected() {
        let (_, bytes) = sample();
        // Flip each byte in turn (magic, header, pairs, trailer): never a clean read.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = Reader::open(bad.as_slice()).and_then(|(_, r)| r.verify_all());
            assert!(ok.is_err(), "a flipped byte {i} went unnoticed");
        }
        for cut in 0..bytes.len() {
            let ok = Reader::open(&bytes[..cut]).and_then(|(_, r)| r.verify_all());
            assert!(ok.is_err(), "a file cut at {cut} went unnoticed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Reader::open(longer.as_slice()).and_then(|(_, r)| r.verify_all()), Err(FormatError::Trailing)));
        // A hostile length is refused before anything is allocated for it.
        let mut huge = bytes[..8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Reader::open(huge.as_slice()), Err(FormatError::Header(_))));
    }
}
