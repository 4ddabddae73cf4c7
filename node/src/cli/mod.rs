//! The `kiln` subcommands other than `serve`, one file per family: [`data`] (compact, storage,
//! import, backup, restore) and [`admin`] (reindex, token, cluster). Their HTTP calls go
//! through one operator client, `kiln::dataio::client::Conn` (bearer token, private CA).

pub mod admin;
pub mod data;
