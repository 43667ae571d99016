//! Errors of the client core.

use crate::model::{DocKind, Role};

/// Why an edit was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The author's organisation does not hold a role that may write there.
    #[error("{org} ({roles}) may not write {collection} in the {kind} document{owner}", roles = roles_text(.roles), owner = owner_text(.owner))]
    NotAllowed {
        /// The author's organisation.
        org: String,
        /// The roles it holds.
        roles: Vec<Role>,
        /// The document kind.
        kind: DocKind,
        /// The document's owner, for partner and operator documents.
        owner: Option<String>,
        /// The collection.
        collection: String,
    },
    /// A value breaks a hard validation rule.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where: `collection/id/field`.
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// An immutable record already exists under this id.
    #[error("{collection}/{id} already exists and cannot be changed; record a correction instead")]
    Immutable {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
    /// Something the edit refers to does not exist.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// This device does not hold the document the edit belongs to.
    #[error("no {kind} document{} on this device; the coordinator must add the organisation as a member first", owner_text(&Some(.owner.clone()).filter(|o: &String| !o.is_empty())))]
    NoDocument {
        /// The document kind.
        kind: DocKind,
        /// The owner, if any.
        owner: String,
    },
    /// A document belongs to another coalition.
    #[error("document {doc} belongs to coalition {coalition}")]
    WrongCoalition {
        /// The document.
        doc: String,
        /// The coalition it names.
        coalition: String,
    },
    /// A document does not describe itself as part of a coalition.
    #[error("not a coalition document (no kind and coalition at its root)")]
    NotACoalitionDocument,
    /// The coalition did not exist yet at the requested time.
    #[error("the coalition did not exist yet on {}", chrono::DateTime::from_timestamp(*.at, 0).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_else(|| at.to_string()))]
    NotYetCreated {
        /// The requested time.
        at: i64,
    },
    /// Automerge refused an operation.
    #[error("automerge refused the operation")]
    Automerge(#[from] automerge::AutomergeError),
    /// A document holds data that does not fit the model.
    #[error("document data does not fit the model")]
    Hydrate(#[from] autosurgeon::HydrateError),
    /// A document holds data at `at` that does not fit the model.
    #[error("document data at {at} does not fit the model")]
    Decode {
        /// Where: `collection/id`.
        at: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing an entity into a document failed.
    #[error("writing to the document failed")]
    Reconcile(#[from] autosurgeon::ReconcileError),
}

impl EditError {
    /// A hard-rule violation at `collection/id/field`.
    pub fn invalid(
        collection: &str,
        id: &str,
        field: &str,
        problem: impl Into<String>,
    ) -> EditError {
        EditError::Invalid {
            at: format!("{collection}/{id}/{field}"),
            problem: problem.into(),
        }
    }
}

fn roles_text(roles: &[Role]) -> String {
    if roles.is_empty() {
        "not a member".to_string()
    } else {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn owner_text(owner: &Option<String>) -> String {
    owner
        .as_ref()
        .map(|o| format!(" of {o}"))
        .unwrap_or_default()
}
