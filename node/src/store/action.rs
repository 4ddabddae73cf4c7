//! What a write does to one resource ([`Action`]), as commands carry it and history rows record it.

use serde::{Deserialize, Serialize};

/// What a write does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// POST: a new resource at a server-assigned id.
    Create,
    /// PUT: replace (or create, when allowed) at the given id.
    Update,
    /// PATCH: a replacement computed from a patch by the proposer.
    Patch,
    /// DELETE: a tombstone version, unless already deleted or absent.
    Delete,
}

impl Action {
    /// The HTTP method recorded in history.
    pub fn method(self) -> &'static str {
        match self {
            Action::Create => "POST",
            Action::Update => "PUT",
            Action::Patch => "PATCH",
            Action::Delete => "DELETE",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Action::Create => b'C',
            Action::Update => b'U',
            Action::Patch => b'P',
            Action::Delete => b'D',
        }
    }

    pub fn from_code(c: u8) -> Option<Action> {
        Some(match c {
            b'C' => Action::Create,
            b'U' => Action::Update,
            b'P' => Action::Patch,
            b'D' => Action::Delete,
            _ => return None,
        })
    }
}
