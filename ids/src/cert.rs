//! How people and tools name one certificate: its serial number ([`CertSerial`]) and the SHA-256
//! fingerprint of its DER encoding ([`CertFingerprint`], the RFC 8705 `x5t#S256`). Both are read the
//! way other tools print them (`openssl x509 -serial -fingerprint -sha256`: upper case, with or
//! without colons) and kept in one canonical form: lowercase hex, without colons.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::IdError;

/// Strips `:` separators and checks every remaining character is a hex digit; lowercase result.
fn hex_digits(s: &str) -> Option<String> {
    let digits: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit())).then_some(digits)
}

/// A certificate serial number: the INTEGER's value in lowercase hex, without leading zeros (at most
/// 20 octets, RFC 5280 4.1.2.2), e.g. `5f1c0a...`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertSerial(String);

impl CertSerial {
    /// The serial from the INTEGER's content octets, as a certificate encodes them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        hex.parse()
    }

    /// The serial as lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The serial's big-endian bytes (with a leading zero byte where the top bit is set, so the
    /// INTEGER stays positive).
    pub fn to_bytes(&self) -> Vec<u8> {
        let padded = if self.0.len() % 2 == 1 {
            format!("0{}", self.0)
        } else {
            self.0.clone()
        };
        let mut out: Vec<u8> = (0..padded.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
            .collect();
        if out.first().is_some_and(|b| b & 0x80 != 0) {
            out.insert(0, 0);
        }
        out
    }
}

impl FromStr for CertSerial {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::CertSerial(s.to_owned());
        let digits = hex_digits(s).ok_or_else(bad)?;
        let value = digits.trim_start_matches('0');
        let value = if value.is_empty() { "0" } else { value };
        if value.len() > 40 {
            return Err(bad());
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a certificate's DER encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of raw digest bytes.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The digest bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for CertFingerprint {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Fingerprint(s.to_owned());
        let digits = hex_digits(s).ok_or_else(bad)?;
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

macro_rules! text_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

text_serde!(CertSerial);
text_serde!(CertFingerprint);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_tools_print_them() {
        let s: CertSerial = "00:5F:1C:0A".parse().unwrap();
        assert_eq!(s.as_str(), "5f1c0a");
        assert_eq!(s, "5f1c0a".parse().unwrap());
        assert_eq!(
            CertSerial::from_bytes(&[0x00, 0x5f, 0x1c, 0x0a]).unwrap(),
            s
        );
        assert_eq!(s.to_bytes(), [0x5f, 0x1c, 0x0a]);
        assert_eq!("f0".parse::<CertSerial>().unwrap().to_bytes(), [0, 0xf0]);
        assert_eq!(
            "abc".parse::<CertSerial>().unwrap().to_bytes(),
            [0x0a, 0xbc]
        );
        assert_eq!("000".parse::<CertSerial>().unwrap().as_str(), "0");
        for bad in ["", "xyz", "12 34", &"1".repeat(41)] {
            let err = bad.parse::<CertSerial>().unwrap_err();
            assert!(err.to_string().contains("serial"), "{bad}: {err}");
        }
    }

    #[test]
    fn fingerprints_are_64_hex_digits() {
        let hex = "ab".repeat(32);
        let f: CertFingerprint = hex.parse().unwrap();
        assert_eq!(f.to_string(), hex);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(colons.parse::<CertFingerprint>().unwrap(), f);
        assert_eq!(f.digest(), &[0xab; 32]);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            let err = bad.parse::<CertFingerprint>().unwrap_err();
            assert!(err.to_string().contains("SHA-256"), "{bad}: {err}");
        }
    }
}
