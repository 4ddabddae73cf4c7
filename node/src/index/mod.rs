//! The search index's storage layer, below both search and terminology: the key layout of index
//! rows ([`rows`]), the posting blocks of doc numbers stored under them ([`posting`]), and the
//! read budget every index read charges ([`cost`]).

pub mod cost;
pub mod posting;
pub mod rows;
