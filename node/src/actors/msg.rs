//! Every message the actors take, in one place.

use actix::Message;
use serde_json::Value;

use super::WriteError;
use crate::machine::command::{Action, Applied, Condition};

/// A write for the actor of the resource's type.
#[derive(Debug, Clone)]
pub struct WriteIntent {
    pub action: Action,
    /// Target id (None for Create: the actor assigns one).
    pub id: Option<String>,
    /// The client's resource (not for Delete).
    pub body: Option<Value>,
    /// `If-Match` version.
    pub if_match: Option<u64>,
    /// A conditional create / update / delete: decided at apply by this search.
    pub condition: Option<Condition>,
}

/// Ask a [`super::resource::ResourceActor`] to validate and commit one write, in a tenant's
/// part of the state (`None`: the default tenant). The trace is the request's span and id
/// ([`crate::trace::Trace::current`]), which the actor proposes under.
#[derive(Debug)]
pub struct Write(pub WriteIntent, pub crate::tenancy::Tenant, pub crate::trace::Trace);

impl Message for Write {
    type Result = Result<(String, Applied), WriteError>;
}

/// Stops an actor that works only while this node leads (an export job, the Meilisearch
/// indexer) when leadership moves.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct Stop;
