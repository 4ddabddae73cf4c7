//! The replicated state machine: the commands every node applies in log order
//! ([`command::Command`]), their deterministic apply ([`state_machine::StateMachine`]: resource
//! writes with their index rows, bundles, export jobs, Meilisearch and Subscription cursors), the
//! replicated records of those jobs and cursors, rebuilding the local index, and the offline
//! operations over a whole database (usage, compaction). Below it: the stored state
//! (`crate::store`) and the search index (`crate::search`); above it: consensus, which feeds it.

pub mod bundle_apply;
pub mod command;
pub mod compact;
pub mod conditions;
pub mod export_apply;
pub mod export_job;
pub mod export_state;
pub mod meili_apply;
pub mod meili_cursor;
pub mod rebuild;
pub mod state_machine;
pub mod sub_cursor;
pub mod subscription_apply;
#[cfg(test)]
pub mod testing;
pub mod usage;
pub mod write_apply;

pub use command::{Action, Command, OpOutcome, WriteOp};
pub use state_machine::StateMachine;
