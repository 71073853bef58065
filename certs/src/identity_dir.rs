//! Identity folders: what a person (or the broker's CLI on their behalf) needs to talk to the broker.
//!
//! ```text
//! OUT/cert.pem   client certificate (SPIFFE id in its URI SAN)
//! OUT/key.pem    its private key, mode 0600
//! OUT/ca.pem     the broker CA, to verify the broker
//! OUT/broker     the broker's address, `host:port`
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::CertsError;
use crate::pki::Issued;

/// The contents of an identity folder.
#[derive(Clone)]
pub struct IdentityDir {
    /// Where it was read from.
    pub dir: PathBuf,
    /// Client certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM. Secret.
    pub key_pem: String,
    /// Broker CA certificate, PEM.
    pub ca_pem: String,
    /// The broker's address, `host:port`.
    pub broker: String,
}

impl std::fmt::Debug for IdentityDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityDir")
            .field("dir", &self.dir)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to `path` with `mode`, replacing any existing file.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertsError> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

impl IdentityDir {
    /// Writes an identity folder at `dir` (created with mode 0700).
    pub fn write(
        dir: &Path,
        issued: &Issued,
        ca_pem: &str,
        broker: &str,
    ) -> Result<Self, CertsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        write_file(&dir.join("cert.pem"), &issued.cert_pem, 0o644)?;
        write_file(&dir.join("key.pem"), &issued.key_pem, 0o600)?;
        write_file(&dir.join("ca.pem"), ca_pem, 0o644)?;
        write_file(&dir.join("broker"), &format!("{broker}\n"), 0o644)?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
            ca_pem: ca_pem.to_owned(),
            broker: broker.to_owned(),
        })
    }

    /// Reads an identity folder.
    pub fn read(dir: &Path) -> Result<Self, CertsError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|source| CertsError::Io { path: p, source })
        };
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem: read("cert.pem")?,
            key_pem: read("key.pem")?,
            ca_pem: read("ca.pem")?,
            broker: read("broker")?.trim().to_owned(),
        })
    }

    /// File names for error messages, in [`crate::tls::PemFiles`] form.
    pub fn pem_files(&self) -> (String, String, String) {
        let n = |f: &str| self.dir.join(f).display().to_string();
        (n("ca.pem"), n("cert.pem"), n("key.pem"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_private_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("alice");
        let issued = Issued {
            cert_pem: "C".into(),
            key_pem: "SECRET-KEY-MATERIAL".into(),
        };
        IdentityDir::write(&dir, &issued, "CA", "localhost:8443").unwrap();
        let mode = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = IdentityDir::read(&dir).unwrap();
        assert_eq!(back.broker, "localhost:8443");
        assert_eq!(back.key_pem, "SECRET-KEY-MATERIAL");
        // A distinctive value: the folder's random temporary name may contain any single letter.
        assert!(
            !format!("{back:?}").contains("SECRET-KEY"),
            "debug output leaks the key"
        );
    }

    #[test]
    fn missing_folder_names_the_file() {
        let err = IdentityDir::read(Path::new("/nonexistent/id")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/id/cert.pem:"),
            "{err}"
        );
    }
}
