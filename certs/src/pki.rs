//! The broker's certificate authority: creating it, loading it, issuing server and client certificates,
//! and signing a certificate revocation list ([`CertificateAuthority::crl`], RFC 5280 section 5) of
//! the certificates the broker has locked, for other tools that trust the same CA.
//!
//! Keys are ECDSA P-256. Client certificates carry exactly one URI SAN (the holder's SPIFFE id) and the
//! holder's groups in a Subject Directory Attributes extension (RFC 5280 4.2.1.8, OID 2.5.29.9) as
//! `organizationalUnitName` (2.5.4.11) values, the way Kubernetes carries groups in the subject but with
//! room for many values.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use sallyport_ids::cert::CertSerial;
use sallyport_ids::{GroupName, SpiffeId, TrustDomain};
use time::OffsetDateTime;

use crate::CertsError;

/// OID of the Subject Directory Attributes extension.
pub const SUBJECT_DIRECTORY_ATTRIBUTES: &[u64] = &[2, 5, 29, 9];
/// OID of the `organizationalUnitName` attribute, used for groups.
pub const OU_ATTRIBUTE: &[u64] = &[2, 5, 4, 11];
/// OID of the `description` attribute, used for the sign-in a certificate was issued on
/// ([`SignIn`]): one value, `sallyport-signin ` followed by its JSON.
pub const DESCRIPTION_ATTRIBUTE: &[u64] = &[2, 5, 4, 13];
/// What a sign-in attribute's value starts with.
const SIGNIN_PREFIX: &str = "sallyport-signin ";

/// The identity-provider sign-in a client certificate was issued on (`sallyport login`), carried in
/// the certificate so that every later decision knows how its holder authenticated. Certificates
/// from `certs issue` carry none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignIn {
    /// The IdP (`iss` of the ID token).
    #[serde(rename = "iss")]
    pub issuer: String,
    /// The person at that IdP (`sub`).
    #[serde(rename = "sub")]
    pub subject: String,
    /// How they authenticated (`amr`, RFC 8176).
    pub amr: Vec<String>,
    /// Whether that was multi-factor.
    pub mfa: bool,
    /// When they authenticated, Unix seconds (`auth_time`, or the token's `iat` without one).
    pub auth_time: u64,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from five minutes ago (clock skew) for `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(300),
            not_after: now + lifetime,
        }
    }
}

/// A freshly issued certificate and its private key, both PEM. `Debug` leaves the key out.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret: write it with mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The broker's certificate authority.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, v: Validity) {
    params.not_before = OffsetDateTime::from(v.not_before);
    params.not_after = OffsetDateTime::from(v.not_after);
}

impl CertificateAuthority {
    /// Creates a new CA for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &TrustDomain) -> Result<Self, CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Sallyport CA {trust_domain}"));
        dn.push(DnType::OrganizationName, "Sallyport");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(
            &mut params,
            Validity::from_now(Duration::from_secs(10 * 365 * 24 * 3600)),
        );
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key (PEM text). `origin` names the files in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &str) -> Result<Self, CertsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertsError::Pem {
            path: origin.into(),
            what: format!("CA private key is not a PKCS#8 PEM key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CertsError::Pem {
            path: origin.into(),
            what: format!("CA certificate is not a PEM certificate: {e}"),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues the broker's TLS server certificate for `hosts` (DNS names or IP addresses).
    pub fn issue_server(&self, hosts: &[String], validity: Validity) -> Result<Issued, CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Sallyport broker");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate naming `id`, carrying `groups`.
    pub fn issue_client(
        &self,
        id: &SpiffeId,
        groups: &[GroupName],
        validity: Validity,
    ) -> Result<Issued, CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = client_params(id, groups, None, validity)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate naming `id`, carrying `groups` and the `signin` it was issued
    /// on, for the public key of a certificate signing request (PEM) whose key stayed with its
    /// holder. The request's signature must verify (proof that the holder has the key); nothing
    /// else of it is used. Returns the certificate, PEM.
    pub fn issue_for_request(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        groups: &[GroupName],
        signin: &SignIn,
        validity: Validity,
    ) -> Result<String, CertsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CertsError::Identity(format!(
                "the certificate signing request is not usable: {e}"
            ))
        })?;
        let params = client_params(id, groups, Some(signin), validity)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

/// What every client certificate says: the SPIFFE id, client authentication, and the attributes.
fn client_params(
    id: &SpiffeId,
    groups: &[GroupName],
    signin: Option<&SignIn>,
    validity: Validity,
) -> Result<CertificateParams, CertsError> {
    {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.principal().name().as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        if !groups.is_empty() || signin.is_some() {
            params.custom_extensions = vec![CustomExtension::from_oid_content(
                SUBJECT_DIRECTORY_ATTRIBUTES,
                encode_attributes(groups, signin),
            )];
        }
        set_validity(&mut params, validity);
        Ok(params)
    }
}

/// One entry of a certificate revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// The certificate's serial number.
    pub serial: CertSerial,
    /// When it was revoked (locked).
    pub at: SystemTime,
}

impl CertificateAuthority {
    /// Signs a CRL listing `revoked`, numbered `number` (which must grow with every CRL this CA
    /// signs), valid from `this_update` until `next_update`; PEM (`BEGIN X509 CRL`). Entries carry
    /// the reason `certificateHold`: a lock can be lifted, unlike a revocation.
    pub fn crl(
        &self,
        revoked: &[RevokedCert],
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, CertsError> {
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::from(this_update),
            next_update: OffsetDateTime::from(next_update),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial.to_bytes()),
                    revocation_time: OffsetDateTime::from(r.at),
                    reason_code: Some(RevocationReason::CertificateHold),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// DER of `SEQUENCE { SEQUENCE { OID ou, SET OF UTF8String } [, SEQUENCE { OID description,
/// SET OF UTF8String }] }`: the groups, then the sign-in if there is one.
fn encode_attributes(groups: &[GroupName], signin: Option<&SignIn>) -> Vec<u8> {
    let signin = signin.map(|s| format!("{SIGNIN_PREFIX}{}", serde_json::json!(s)));
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            if !groups.is_empty() {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&yasna::models::ObjectIdentifier::from_slice(OU_ATTRIBUTE));
                    w.next().write_set_of(|w| {
                        for g in groups {
                            w.next().write_utf8_string(g.as_str());
                        }
                    });
                });
            }
            if let Some(s) = &signin {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&yasna::models::ObjectIdentifier::from_slice(
                            DESCRIPTION_ATTRIBUTE,
                        ));
                    w.next().write_set_of(|w| w.next().write_utf8_string(s));
                });
            }
        });
    })
}

/// Reads the groups and the sign-in back from a Subject Directory Attributes extension value.
pub(crate) fn decode_attributes(der: &[u8]) -> Result<(Vec<String>, Option<SignIn>), CertsError> {
    let ou = yasna::models::ObjectIdentifier::from_slice(OU_ATTRIBUTE);
    let description = yasna::models::ObjectIdentifier::from_slice(DESCRIPTION_ATTRIBUTE);
    let (groups, descriptions) = yasna::parse_der(der, |r| {
        let (mut groups, mut descriptions) = (Vec::new(), Vec::new());
        r.read_sequence_of(|r| {
            r.read_sequence(|r| {
                let oid = r.next().read_oid()?;
                r.next().read_set_of(|r| {
                    let v = r.read_utf8string()?;
                    if oid == ou {
                        groups.push(v);
                    } else if oid == description {
                        descriptions.push(v);
                    }
                    Ok(())
                })
            })
        })?;
        Ok((groups, descriptions))
    })
    .map_err(|e| CertsError::Identity(format!("unreadable attributes extension: {e}")))?;
    let mut signin = None;
    for d in descriptions {
        if let Some(json) = d.strip_prefix(SIGNIN_PREFIX) {
            if signin.is_some() {
                return Err(CertsError::Identity("two sign-in attributes".into()));
            }
            signin =
                Some(serde_json::from_str(json).map_err(|e| {
                    CertsError::Identity(format!("unreadable sign-in attribute: {e}"))
                })?);
        }
    }
    Ok((groups, signin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip() {
        let groups: Vec<GroupName> = vec!["oncall".parse().unwrap(), "dba".parse().unwrap()];
        let (mut back, signin) = decode_attributes(&encode_attributes(&groups, None)).unwrap();
        back.sort();
        assert_eq!(back, vec!["dba", "oncall"]);
        assert_eq!(signin, None);
        let s = SignIn {
            issuer: "https://idp.example".into(),
            subject: "u-1".into(),
            amr: vec!["pwd".into(), "otp".into()],
            mfa: true,
            auth_time: 1_700_000_000,
        };
        let (back, signin) = decode_attributes(&encode_attributes(&[], Some(&s))).unwrap();
        assert!(back.is_empty());
        assert_eq!(signin, Some(s));
    }

    #[test]
    fn ca_reloads_from_pem_and_keeps_issuing() {
        let td: TrustDomain = "sallyport.test".parse().unwrap();
        let ca = CertificateAuthority::generate(&td).unwrap();
        let again = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem(), "ca.pem").unwrap();
        let issued = again
            .issue_server(
                &["localhost".into()],
                Validity::from_now(Duration::from_secs(60)),
            )
            .unwrap();
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn crl_lists_the_revoked_serials_signed_by_the_ca() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        use x509_parser::revocation_list::CertificateRevocationList;
        let td: TrustDomain = "sallyport.test".parse().unwrap();
        let ca = CertificateAuthority::generate(&td).unwrap();
        let now = SystemTime::now();
        let serial: CertSerial = "00:8f:01".parse().unwrap();
        let pem = ca
            .crl(
                &[RevokedCert {
                    serial: serial.clone(),
                    at: now,
                }],
                7,
                now,
                now + Duration::from_secs(3600),
            )
            .unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"), "{pem}");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateRevocationListDer<'_>| d.to_vec())
            .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let listed: Vec<CertSerial> = crl
            .iter_revoked_certificates()
            .map(|r| CertSerial::from_bytes(r.raw_serial()).unwrap())
            .collect();
        assert_eq!(listed, [serial]);
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
        // Signed by the CA: its issuer is the CA's subject (the signature is checked end to end
        // with openssl in tests/locks.rs).
        let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'_>| d.to_vec())
            .unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(crl.issuer(), ca_cert.subject());
        let err = ca.crl(&[], 8, now, now).unwrap_err();
        assert!(
            err.to_string().contains("certificate generation failed"),
            "{err}"
        );
    }

    #[test]
    fn bad_ca_key_names_the_file() {
        let err = CertificateAuthority::from_pem("x", "not a key", "pki/ca.key").unwrap_err();
        assert!(
            err.to_string().starts_with("pki/ca.key: CA private key"),
            "{err}"
        );
    }
}
