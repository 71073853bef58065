//! `sallyport login` on the client side: a key pair made here (its private key never leaves this
//! machine) and a certificate signing request for it, the login started at the broker's sign-in
//! listener, and the wait for the certificate the broker issues once the person signed in at the
//! identity provider.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::{BrokerClient, ClientError, Result};

/// How long a login may take, from its start (the broker forgets it after 10 minutes too).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

/// A key pair and a certificate signing request for it.
pub struct KeyRequest {
    /// The private key, PKCS#8 PEM. Secret: written with mode 0600, never sent.
    pub key_pem: String,
    /// The certificate signing request, PEM: what the broker sees.
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRequest")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A fresh ECDSA P-256 key pair and a signing request for it.
pub fn key_and_request() -> Result<KeyRequest> {
    let bad = |e: rcgen::Error| ClientError::Input(format!("making a key pair: {e}"));
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(bad)?
        .serialize_request(&key)
        .map_err(bad)?
        .pem()
        .map_err(bad)?;
    Ok(KeyRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
}

/// A started login.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its id.
    pub id: String,
    /// The identity provider's URL to open in a browser.
    pub url: String,
    /// What fetches the certificate (only this client has it).
    pub secret: String,
}

/// Starts a login for `csr_pem` at the provider's IdP, or at `customer`'s (`role` picks approver or
/// auditor when the person is both).
pub async fn start(
    web: &BrokerClient,
    csr_pem: &str,
    customer: Option<&str>,
    role: Option<&str>,
) -> Result<Started> {
    let mut body = serde_json::json!({ "csr": csr_pem });
    if let Some(c) = customer {
        body["customer"] = c.into();
    }
    if let Some(r) = role {
        body["role"] = r.into();
    }
    let (status, v) = web.call(Method::POST, "/login", Some(body)).await?;
    if status != StatusCode::OK {
        return Err(ClientError::Refused(crate::api::error_message(status, &v)));
    }
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    match (s("id"), s("url"), s("secret")) {
        (Some(id), Some(url), Some(secret)) => Ok(Started { id, url, secret }),
        _ => Err(ClientError::Refused(
            "the sign-in listener's answer has no id, url and secret".into(),
        )),
    }
}

/// Waits for login `started` to finish: the broker's answer (`cert`, `ca`, `broker`, `identity`,
/// `expires_at`, ...), or its refusal in its words.
pub async fn wait(web: &BrokerClient, started: &Started) -> Result<serde_json::Value> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let path = format!("/login/{}/wait", started.id);
    let body = serde_json::json!({ "secret": started.secret });
    while Instant::now() < deadline {
        let (status, v) = web.call(Method::POST, &path, Some(body.clone())).await?;
        match status {
            StatusCode::OK => return Ok(v),
            StatusCode::ACCEPTED => continue,
            _ => return Err(ClientError::Refused(crate::api::error_message(status, &v))),
        }
    }
    Err(ClientError::Refused(
        "the sign-in was not finished within 10 minutes; run the command again".into(),
    ))
}
