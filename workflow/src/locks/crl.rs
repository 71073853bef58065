//! The CRL of locked certificates (`tls.crl = true`), signed by the broker CA, for other tools that
//! trust the same CA (a web server's `ssl_crl`, HAProxy's `crl-file`, `openssl verify -crl_check`).
//!
//! It lists every certificate a lock everywhere bars: the certificates locked one by one, and the
//! registered certificates (still valid) of the identities locked as a whole. Locks for one customer
//! are left out: the certificate is still good elsewhere. It is re-signed at every change of the
//! locks and at least every [`RESIGN`]; each one is valid for [`VALIDITY`] and numbered above the
//! last. It is kept in memory (`GET /v1/crl`) and written to `<data_dir>/crl.pem`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sallyport_certs::pki::{CertificateAuthority, RevokedCert};
use sallyport_store::LockTarget;

use crate::{Db, WorkflowError};

/// How long a CRL is valid (its `nextUpdate`).
pub const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// A CRL is re-signed at least this often, well before its `nextUpdate`.
pub const RESIGN: Duration = Duration::from_secs(12 * 3600);

/// The last CRL signed.
#[derive(Debug, Clone)]
struct Signed {
    pem: String,
    number: u64,
    at: i64,
}

/// The CRL publisher: the CA that signs it and where it is written.
pub struct Crl {
    ca: CertificateAuthority,
    path: PathBuf,
    last: Mutex<Option<Signed>>,
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crl")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn at(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

impl Crl {
    /// A publisher signing with `ca` and writing to `path`.
    pub fn new(ca: CertificateAuthority, path: PathBuf) -> Self {
        Self {
            ca,
            path,
            last: Mutex::new(None),
        }
    }

    /// The current CRL, PEM (`None` before the first one is signed).
    pub fn pem(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.pem.clone())
    }

    /// Whether the CRL should be re-signed at `now` even without a change.
    pub fn due(&self, now: i64) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|s| now - s.at >= i64::try_from(RESIGN.as_secs()).unwrap_or(i64::MAX))
    }

    /// Signs a CRL of what the active locks at `now` bar everywhere, and writes it.
    pub async fn publish(&self, db: &Db, now: i64) -> Result<(), WorkflowError> {
        let revoked = db
            .run(move |s| {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                for rec in s.locks(Some(now), super::MAX_ACTIVE_LOCKS)? {
                    let l = &rec.lock;
                    if l.customer.is_some() {
                        continue;
                    }
                    match &l.target {
                        LockTarget::Certificate { serial, .. } => {
                            if seen.insert(serial.clone()) {
                                out.push(RevokedCert {
                                    serial: serial.clone(),
                                    at: at(l.created_at),
                                });
                            }
                        }
                        LockTarget::Identity(id) => {
                            for c in s.certificates_of(id, now)? {
                                if seen.insert(c.serial.clone()) {
                                    out.push(RevokedCert {
                                        serial: c.serial,
                                        at: at(l.created_at),
                                    });
                                }
                            }
                        }
                    }
                }
                Ok(out)
            })
            .await?;
        let number = {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let floor = u64::try_from(now).unwrap_or(0);
            last.as_ref().map_or(floor, |s| floor.max(s.number + 1))
        };
        let pem = self
            .ca
            .crl(&revoked, number, at(now), at(now) + VALIDITY)
            .map_err(|e| {
                tracing::error!(error = %e, "signing the CRL failed");
                WorkflowError::SigningFailed
            })?;
        let (path, text) = (self.path.clone(), pem.clone());
        tokio::task::spawn_blocking(move || write_atomically(&path, &text))
            .await
            .map_err(|e| WorkflowError::StoreUnavailable(format!("CRL writer failed: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, path = %self.path.display(), "writing the CRL failed");
                WorkflowError::StoreUnavailable(format!("{}: {e}", self.path.display()))
            })?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Signed {
            pem,
            number,
            at: now,
        });
        tracing::debug!(entries = revoked.len(), number, "CRL published");
        Ok(())
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so readers never see half a CRL.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
