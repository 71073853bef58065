//! Who is on the other end of a TLS connection: the SPIFFE id and groups read from a client certificate
//! that rustls has already verified against the broker CA; and how a certificate is named for a lock
//! ([`certificate_serial`], [`PeerIdentity::fingerprint`]).

use std::time::{Duration, SystemTime};

use sallyport_ids::cert::{CertFingerprint, CertSerial};
use sallyport_ids::{GroupName, SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertsError;
use crate::pki::{SUBJECT_DIRECTORY_ATTRIBUTES, SignIn};

/// The identity carried by a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The holder's SPIFFE id (the certificate's one URI SAN).
    pub id: SpiffeId,
    /// Groups from the certificate (technicians only; empty otherwise).
    pub groups: Vec<GroupName>,
    /// SHA-256 of the DER certificate (`x5t#S256`).
    pub thumbprint: [u8; 32],
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// The identity-provider sign-in it was issued on (`sallyport login`); `None` for certificates
    /// from `certs issue`.
    pub signin: Option<SignIn>,
}

/// The serial number of a DER certificate.
pub fn certificate_serial(der: &[u8]) -> Result<CertSerial, CertsError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertsError::Identity(format!("unparsable certificate: {e}")))?;
    CertSerial::from_bytes(cert.raw_serial())
        .map_err(|e| CertsError::Identity(format!("certificate serial: {e}")))
}

impl PeerIdentity {
    /// The certificate's SHA-256 fingerprint (the same bytes as [`PeerIdentity::thumbprint`]).
    pub fn fingerprint(&self) -> CertFingerprint {
        CertFingerprint::from_digest(self.thumbprint)
    }

    /// Whether its holder signed in with more than one factor (a certificate from `certs issue`
    /// records no sign-in, so no).
    pub fn mfa(&self) -> bool {
        self.signin.as_ref().is_some_and(|s| s.mfa)
    }

    /// Reads the identity from a DER certificate and checks it belongs to `trust_domain`.
    ///
    /// This does not verify the certificate chain: call it on certificates rustls has verified.
    pub fn from_der(der: &[u8], trust_domain: &TrustDomain) -> Result<Self, CertsError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CertsError::Identity(format!("unparsable certificate: {e}")))?;
        let mut uris = Vec::new();
        let mut groups = Vec::new();
        let mut signin = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(u) = name {
                            uris.push(*u);
                        }
                    }
                }
                _ if ext
                    .oid
                    .iter()
                    .is_some_and(|arcs| arcs.eq(SUBJECT_DIRECTORY_ATTRIBUTES.iter().copied())) =>
                {
                    let (names, read) = crate::pki::decode_attributes(ext.value)?;
                    signin = read;
                    for g in names {
                        groups.push(g.parse().map_err(|e| {
                            CertsError::Identity(format!("bad group in certificate: {e}"))
                        })?);
                    }
                }
                _ => {}
            }
        }
        let [uri] = uris.as_slice() else {
            return Err(CertsError::Identity(format!(
                "expected exactly one URI SAN (a SPIFFE id), found {}",
                uris.len()
            )));
        };
        let id: SpiffeId = uri
            .parse()
            .map_err(|e| CertsError::Identity(format!("{e}")))?;
        if id.trust_domain() != trust_domain {
            return Err(CertsError::Identity(format!(
                "SPIFFE id `{id}` is not in trust domain `{trust_domain}`"
            )));
        }
        let secs = cert.validity().not_after.timestamp().max(0) as u64;
        Ok(Self {
            id,
            groups,
            thumbprint: crate::cert_thumbprint(der),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            signin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Validity};
    use sallyport_ids::Principal;

    fn der_of(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn reads_spiffe_id_and_groups() {
        let td: TrustDomain = "sallyport.test".parse().unwrap();
        let ca = CertificateAuthority::generate(&td).unwrap();
        let id = SpiffeId::new(
            td.clone(),
            Principal::Technician {
                provider: "northwind".parse().unwrap(),
                name: "alice".parse().unwrap(),
            },
        );
        let groups = vec!["support".parse().unwrap(), "dba".parse().unwrap()];
        let issued = ca
            .issue_client(&id, &groups, Validity::from_now(Duration::from_secs(3600)))
            .unwrap();
        let der = der_of(&issued.cert_pem);
        let peer = PeerIdentity::from_der(&der, &td).unwrap();
        assert_eq!(peer.id, id);
        let mut got: Vec<_> = peer.groups.iter().map(|g| g.to_string()).collect();
        got.sort();
        assert_eq!(got, ["dba", "support"]);
        assert_eq!(peer.thumbprint, crate::cert_thumbprint(&der));
        assert_eq!(peer.fingerprint().digest(), &peer.thumbprint);
        // The serial as x509-parser reads it: random, positive, at most 16 octets.
        let serial = certificate_serial(&der).unwrap();
        assert!(!serial.as_str().is_empty() && serial.as_str().len() <= 32);
        assert_ne!(
            serial,
            certificate_serial(&der_of(
                &ca.issue_client(&id, &groups, Validity::from_now(Duration::from_secs(60)))
                    .unwrap()
                    .cert_pem
            ))
            .unwrap()
        );

        let other: TrustDomain = "elsewhere.test".parse().unwrap();
        let err = PeerIdentity::from_der(&der, &other).unwrap_err();
        assert!(err.to_string().contains("not in trust domain"), "{err}");
    }

    #[test]
    fn server_certificate_is_not_an_identity() {
        let td: TrustDomain = "sallyport.test".parse().unwrap();
        let ca = CertificateAuthority::generate(&td).unwrap();
        let issued = ca
            .issue_server(
                &["localhost".into()],
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        let err = PeerIdentity::from_der(&der_of(&issued.cert_pem), &td).unwrap_err();
        assert!(err.to_string().contains("exactly one URI SAN"), "{err}");
    }
}
