//! The one error type an app sees: every failure of the core, flattened at the FFI boundary.
//!
//! The core keeps one `thiserror` enum per operation with the causes chained
//! ([`EditError`], [`StoreError`], [`EnrollError`], [`SyncError`]). Foreign code cannot walk a
//! Rust `source()` chain, so each is flattened here (as matrix-rust-sdk's FFI crate does) into
//! [`CoalitionError`]: the variant says what kind of failure it is, and `detail` is the
//! complete message, causes included, ready to show to the user.

use coalition_core::store::StoreError;
use coalition_core::transport::{ConnectError, EnrollError, SessionError, SyncError};
use coalition_core::EditError;

/// Why a call failed. Nothing was written to the store unless the variant says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CoalitionError {
    /// The device has no identity or no credential yet: call `enroll` first.
    #[error("{detail}")]
    NotEnrolled {
        /// What is missing and what to do.
        detail: String,
    },
    /// The user's organisation may not make this edit (wrong role, or another
    /// organisation's document). Nothing was written.
    #[error("{detail}")]
    NotAllowed {
        /// Who tried to write what.
        detail: String,
    },
    /// A value breaks a rule of the domain, or an argument is not well formed. Nothing was
    /// written.
    #[error("{field}: {detail}")]
    Invalid {
        /// Where: `collection/id/field` for an entity (`releases/e-1/cleared_m2`), or the
        /// argument's name (`as_of`, `server`).
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// Something the call refers to does not exist on this device.
    #[error("{detail}")]
    NotFound {
        /// What was looked for: `coalition`, `hazard area`, `pledge`, `document`...
        what: String,
        /// Its id.
        id: String,
        /// The full message.
        detail: String,
    },
    /// The relay refused the invite (unknown, already used, expired). Nothing was stored.
    #[error("the relay refused the enrollment: {detail} ({code})")]
    InviteRefused {
        /// The relay's stable error code (`invalid_invite`, `invite_used`, `invite_expired`).
        code: String,
        /// The relay's message.
        detail: String,
    },
    /// The relay refused this device's credential (revoked or unknown). Local data and the
    /// queue of unsent edits are kept; enroll again with a new invite.
    #[error("the relay refused this device's credential: {detail} ({code}); local work is kept")]
    CredentialRefused {
        /// The relay's stable error code (`unauthorized`, `device_revoked`...).
        code: String,
        /// The relay's message.
        detail: String,
    },
    /// The relay could not be reached, timed out, or the link dropped. Local work is kept;
    /// try again later.
    #[error("{detail}")]
    Network {
        /// What happened, with its causes.
        detail: String,
    },
    /// The local store failed (disk full, permissions, damaged file). Nothing more was
    /// written or acknowledged.
    #[error("{detail}")]
    Store {
        /// What failed, with its causes.
        detail: String,
    },
    /// Stored or received data does not fit the coalition model.
    #[error("{detail}")]
    Data {
        /// What does not fit, and where.
        detail: String,
    },
    /// A failure inside the library (its runtime could not start, a task panicked).
    #[error("{detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}

/// A result of this crate.
pub type Result<T, E = CoalitionError> = std::result::Result<T, E>;

/// An error and its causes on one line, as anyhow's `{:#}` shows them.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` wrappers repeat their source's message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl CoalitionError {
    /// An argument that is not well formed.
    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Self {
        CoalitionError::Invalid {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }

    /// Something looked up by id that is not there.
    pub(crate) fn not_found(what: &str, id: &str) -> Self {
        CoalitionError::NotFound {
            what: what.to_owned(),
            id: id.to_owned(),
            detail: format!("{what} `{id}` not found"),
        }
    }

    /// A failure inside the library.
    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        CoalitionError::Internal {
            detail: detail.into(),
        }
    }
}

impl From<EditError> for CoalitionError {
    fn from(e: EditError) -> Self {
        let detail = chain(&e);
        match e {
            EditError::NotAllowed { .. } => CoalitionError::NotAllowed { detail },
            EditError::Invalid { at, problem } => CoalitionError::Invalid {
                field: at,
                detail: problem,
            },
            EditError::Immutable { collection, id } => CoalitionError::Invalid {
                field: format!("{collection}/{id}"),
                detail,
            },
            EditError::NotFound { what, id } => CoalitionError::NotFound {
                what: what.to_owned(),
                id,
                detail,
            },
            EditError::NoDocument { kind, owner } => CoalitionError::NotFound {
                what: format!("{kind} document"),
                id: owner,
                detail,
            },
            EditError::NotYetCreated { .. } => CoalitionError::Invalid {
                field: "as_of".to_owned(),
                detail,
            },
            _ => CoalitionError::Data { detail },
        }
    }
}

impl From<StoreError> for CoalitionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Model(edit) => edit.into(),
            StoreError::UnknownCoalition(id) => CoalitionError::NotFound {
                detail: format!("no coalition {id} on this device"),
                what: "coalition".to_owned(),
                id,
            },
            other => CoalitionError::Store {
                detail: chain(&other),
            },
        }
    }
}

impl From<EnrollError> for CoalitionError {
    fn from(e: EnrollError) -> Self {
        let detail = chain(&e);
        match e {
            EnrollError::InvalidServerUrl(_) => CoalitionError::Invalid {
                field: "server".to_owned(),
                detail,
            },
            EnrollError::Refused { code, message, .. } => CoalitionError::InviteRefused {
                code,
                detail: message,
            },
            EnrollError::Store(store) => store.into(),
            EnrollError::InvalidCoalitionId { .. } => CoalitionError::Data { detail },
            _ => CoalitionError::Network { detail },
        }
    }
}

impl From<SyncError> for CoalitionError {
    fn from(e: SyncError) -> Self {
        let detail = chain(&e);
        match e {
            SyncError::NotEnrolled => CoalitionError::NotEnrolled { detail },
            SyncError::Connect(ConnectError::Refused { code, message, .. }) => {
                CoalitionError::CredentialRefused {
                    code,
                    detail: message,
                }
            }
            SyncError::Connect(ConnectError::InvalidCredential) => {
                CoalitionError::CredentialRefused {
                    code: "invalid_credential".to_owned(),
                    detail,
                }
            }
            SyncError::Connect(ConnectError::InvalidServerUrl(_)) => CoalitionError::Invalid {
                field: "server".to_owned(),
                detail,
            },
            SyncError::Connect(_) => CoalitionError::Network { detail },
            SyncError::Session(SessionError::NotACoalitionDocument { .. }) => {
                CoalitionError::Data { detail }
            }
            SyncError::Store(store) | SyncError::Session(SessionError::Store(store)) => {
                store.into()
            }
            _ => CoalitionError::Store { detail },
        }
    }
}

impl From<tokio::task::JoinError> for CoalitionError {
    fn from(e: tokio::task::JoinError) -> Self {
        CoalitionError::internal(format!("a library task ended abnormally: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_errors_keep_the_field_path_and_the_message() {
        let e: CoalitionError =
            EditError::invalid("releases", "e-1", "cleared_m2", "must not be negative").into();
        assert_eq!(
            e,
            CoalitionError::Invalid {
                field: "releases/e-1/cleared_m2".into(),
                detail: "must not be negative".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "releases/e-1/cleared_m2: must not be negative"
        );
    }

    #[test]
    fn an_unknown_coalition_is_not_found() {
        let e: CoalitionError = StoreError::UnknownCoalition("abc".into()).into();
        assert!(
            matches!(e, CoalitionError::NotFound { ref what, ref id, .. } if what == "coalition" && id == "abc")
        );
    }

    #[test]
    fn a_refused_credential_says_local_work_is_kept() {
        let e: CoalitionError = SyncError::Connect(ConnectError::Refused {
            status: 401,
            code: "device_revoked".into(),
            message: "this device was revoked".into(),
        })
        .into();
        assert_eq!(
            e.to_string(),
            "the relay refused this device's credential: this device was revoked (device_revoked); local work is kept"
        );
    }
}
