//! Entry points shared by the fuzz targets in `node/fuzz/` (cargo-fuzz, nightly) and the corpus
//! replay test that CI runs on stable: each takes arbitrary bytes and must never panic, hang or
//! allocate without bound.
