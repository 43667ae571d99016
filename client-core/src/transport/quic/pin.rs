//! The relay's QUIC certificate pin, and how invites carry it.
//!
//! A relay makes its own certificate at first start, so no certificate authority vouches for
//! it: the device trusts the key the invite names instead. The pin is the SHA-256 of the
//! certificate's SubjectPublicKeyInfo (as in HPKP and Chromium's `--ignore-certificate-errors-spki-list`),
//! written as unpadded base64url (43 characters). Pinning the key rather than the certificate
//! lets the relay renew its certificate without re-inviting anyone.
//!
//! An invite with a pin reads `inv-<hex>.<port>.<pin>`: the code the relay checks, the relay's
//! QUIC UDP port (on the host of the enrollment URL) and the pin. A plain `inv-<hex>` still
//! enrolls; such a device syncs over WebSocket only. The relay never sees the suffix.
//!
//! [`PinVerifier`] is the only certificate verifier the QUIC client uses with a pin: a
//! certificate whose key does not match is refused, and the TLS 1.3 handshake signature is
//! still checked against that key, so a stolen certificate without its key does not pass.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a pin or an invite could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinError {
    /// The pin is not 32 bytes of unpadded base64url.
    #[error("`{0}` is not a certificate pin (43 characters of base64url)")]
    BadPin(String),
    /// The port in an invite is not a UDP port.
    #[error("`{0}` is not a port number")]
    BadPort(String),
    /// The invite has a suffix that is neither empty nor `.<port>.<pin>`.
    #[error("the invite `{0}` is not `inv-CODE` or `inv-CODE.PORT.PIN`")]
    BadInvite(String),
    /// The certificate could not be parsed to find its public key.
    #[error("the certificate cannot be read")]
    BadCertificate(#[source] webpki::Error),
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> SpkiPin {
        SpkiPin(Sha256::digest(spki_der).into())
    }

    /// The pin of a DER-encoded X.509 certificate's public key.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<SpkiPin, PinError> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(PinError::BadCertificate)?;
        Ok(SpkiPin::of_spki(&parsed.subject_public_key_info()))
    }

    /// Reads the text form (43 characters of unpadded base64url).
    pub fn parse(text: &str) -> Result<SpkiPin, PinError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| PinError::BadPin(text.to_owned()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| PinError::BadPin(text.to_owned()))?;
        Ok(SpkiPin(bytes))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

/// Where and how to reach a relay over QUIC, as an invite says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicEndpoint {
    /// The UDP port on the relay's host.
    pub port: u16,
    /// The pin of the relay's certificate key.
    pub pin: SpkiPin,
}

/// An invite as a user pastes it: the code the relay checks, and the QUIC endpoint if the
/// relay put one in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// `inv-<hex>`, sent to the relay.
    pub code: String,
    /// The relay's QUIC port and pin.
    pub quic: Option<QuicEndpoint>,
}

impl Invite {
    /// Reads `inv-CODE` or `inv-CODE.PORT.PIN`.
    pub fn parse(text: &str) -> Result<Invite, PinError> {
        let text = text.trim();
        let mut parts = text.split('.');
        let code = parts.next().unwrap_or_default().to_owned();
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => Ok(Invite { code, quic: None }),
            (Some(port), Some(pin), None) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| PinError::BadPort(port.to_owned()))?;
                Ok(Invite {
                    code,
                    quic: Some(QuicEndpoint {
                        port,
                        pin: SpkiPin::parse(pin)?,
                    }),
                })
            }
            _ => Err(PinError::BadInvite(text.to_owned())),
        }
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)?;
        if let Some(q) = &self.quic {
            write!(f, ".{}.{}", q.port, q.pin)?;
        }
        Ok(())
    }
}

/// Accepts exactly the certificate whose public key has the pin, and checks the handshake
/// signature with that key. Names and dates are not checked: the relay's self-made
/// certificate names `localhost` and whatever address it was started on, and a device
/// trusts the key, not a name.
#[derive(Debug)]
pub struct PinVerifier {
    pin: SpkiPin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// A verifier for `pin`, checking signatures with the provider's algorithms.
    pub fn new(pin: SpkiPin, provider: &CryptoProvider) -> Arc<PinVerifier> {
        Arc::new(PinVerifier {
            pin,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = SpkiPin::of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if presented != self.pin {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only (RFC 9001, section 4.2).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_with_and_without_a_pin() {
        let pin = SpkiPin::of_spki(b"key");
        let text = format!("inv-00ff.8443.{pin}");
        let invite = Invite::parse(&text).expect("parse");
        assert_eq!(invite.code, "inv-00ff");
        assert_eq!(invite.quic, Some(QuicEndpoint { port: 8443, pin }));
        assert_eq!(invite.to_string(), text);
        assert_eq!(pin.to_string().len(), 43);

        let plain = Invite::parse(" inv-00ff ").expect("parse");
        assert_eq!(plain.code, "inv-00ff");
        assert_eq!(plain.quic, None);

        assert_eq!(
            Invite::parse("inv-00ff.0.x"),
            Err(PinError::BadPort("0".into()))
        );
        assert!(matches!(
            Invite::parse("inv-00ff.8443.short"),
            Err(PinError::BadPin(_))
        ));
        assert!(matches!(
            Invite::parse("inv-00ff.8443"),
            Err(PinError::BadInvite(_))
        ));
    }
}
