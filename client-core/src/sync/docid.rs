//! Document ids and `automerge:` URLs, as automerge-repo makes them.
//!
//! A document id is 16 random bytes written as base58check (base58 with a four-byte double
//! SHA-256 checksum and no version byte), the same as `generateAutomergeUrl` and
//! `binaryToDocumentId` in `@automerge/automerge-repo`. A URL is that string behind the
//! `automerge:` prefix. Because the text form is what travels on the wire (`documentId` in every
//! repo message) and what people paste into invites, [`DocumentId`] serializes as that string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The prefix of an Automerge URL.
pub const URL_PREFIX: &str = "automerge:";

/// The id of an Automerge document, shared by every peer that syncs it.
///
/// Always 16 bytes. automerge-repo itself accepts any bs58check payload, but every id it makes
/// is 16 bytes; keeping the length fixed lets the id be `Copy` and a fixed-width storage key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a string is not a [`DocumentId`] or an Automerge URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocumentIdError {
    /// The text is not base58check, or its checksum does not match.
    #[error("not a base58check document id: {0}")]
    Base58(#[source] bs58::decode::Error),
    /// The decoded id does not have the 16 bytes automerge-repo uses.
    #[error("a document id has 16 bytes, this one has {0}")]
    WrongLength(usize),
    /// The text does not start with `automerge:`.
    #[error("an Automerge URL starts with `automerge:`")]
    NotAnAutomergeUrl,
}

impl DocumentId {
    /// A fresh id from 16 random bytes (what `Repo.create()` does in JavaScript).
    pub fn new_random() -> Self {
        Self(rand::random())
    }

    /// The id with these raw bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw 16 bytes of the id.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The `automerge:<id>` URL of this document.
    pub fn to_url(&self) -> String {
        format!("{URL_PREFIX}{self}")
    }

    /// Parses an `automerge:<id>` URL.
    ///
    /// automerge-repo URLs may pin heads (`#h1|h2`) or point into the document (`/path`). Both
    /// still name this document, so they are accepted and the suffix is dropped: callers that
    /// need heads or paths must parse them themselves.
    pub fn from_url(url: &str) -> Result<Self, DocumentIdError> {
        let rest = url
            .strip_prefix(URL_PREFIX)
            .ok_or(DocumentIdError::NotAnAutomergeUrl)?;
        let end = rest.find(['#', '/']).unwrap_or(rest.len());
        rest[..end].parse()
    }

    /// Parses either a bare id or an `automerge:` URL, as `interpretAsDocumentId` does.
    pub fn parse_id_or_url(text: &str) -> Result<Self, DocumentIdError> {
        if text.starts_with(URL_PREFIX) {
            Self::from_url(text)
        } else {
            text.parse()
        }
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl FromStr for DocumentId {
    type Err = DocumentIdError;

    /// Parses a bare base58check id (no `automerge:` prefix).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(DocumentIdError::Base58)?;
        let bytes: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| DocumentIdError::WrongLength(bytes.len()))?;
        Ok(Self(bytes))
    }
}

impl Serialize for DocumentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DocumentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = DocumentId::new_random();
        let text = id.to_string();
        assert_eq!(text.parse::<DocumentId>(), Ok(id));
        assert_eq!(DocumentId::from_url(&id.to_url()), Ok(id));
        assert_eq!(DocumentId::parse_id_or_url(&text), Ok(id));
        assert_eq!(DocumentId::parse_id_or_url(&id.to_url()), Ok(id));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(DocumentId::new_random(), DocumentId::new_random());
    }

    #[test]
    fn known_javascript_id_parses() {
        // bs58check (as the `bs58check` npm package used by automerge-repo) of the bytes 0..16,
        // computed independently of the bs58 crate. The checksum is double SHA-256, so a wrong
        // checksum algorithm or a version byte would fail here.
        let id = DocumentId::from_bytes(core::array::from_fn(|i| i as u8));
        let text = id.to_string();
        assert_eq!(text, "1Bhh3pU9gLXZiNDL6PEa1Gs9fh");
        assert_eq!(text.parse::<DocumentId>(), Ok(id));
    }

    #[test]
    fn url_suffixes_are_dropped() {
        let id = DocumentId::new_random();
        assert_eq!(
            DocumentId::from_url(&format!("{}#abc|def", id.to_url())),
            Ok(id)
        );
        assert_eq!(
            DocumentId::from_url(&format!("{}/a/b", id.to_url())),
            Ok(id)
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let id = DocumentId::new_random().to_string();
        // Change one character: the checksum must catch it.
        let mut chars: Vec<char> = id.chars().collect();
        chars[3] = if chars[3] == 'a' { 'b' } else { 'a' };
        let tampered: String = chars.into_iter().collect();
        assert!(matches!(
            tampered.parse::<DocumentId>(),
            Err(DocumentIdError::Base58(_))
        ));

        let short = bs58::encode([1u8, 2, 3]).with_check().into_string();
        assert_eq!(
            short.parse::<DocumentId>(),
            Err(DocumentIdError::WrongLength(3))
        );
        assert_eq!(
            DocumentId::from_url(&id),
            Err(DocumentIdError::NotAnAutomergeUrl)
        );
        assert!("".parse::<DocumentId>().is_err());
        assert!("0OIl".parse::<DocumentId>().is_err());
    }

    #[test]
    fn serde_uses_the_string_form() -> Result<(), serde_json::Error> {
        let id = DocumentId::new_random();
        let json = serde_json::to_string(&id)?;
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<DocumentId>(&json)?, id);
        assert!(serde_json::from_str::<DocumentId>("\"nope\"").is_err());
        Ok(())
    }
}
