//! The client's error: each variant says what failed in words a person can act on (the broker's
//! address, the flag to change, the command to run), never a library's message alone.

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Something the caller gave cannot be used: a broker address, `CUSTOMER/TARGET`, a grant.
    #[error("{0}")]
    Input(String),
    /// The identity folder's certificate, key or CA cannot be used.
    #[error(transparent)]
    Certs(#[from] sallyport_certs::CertsError),
    /// A socket operation failed; `what` says which, and what to do.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        error: std::io::Error,
    },
    /// The TLS handshake with the broker failed, in words.
    #[error("{0}")]
    Handshake(String),
    /// HTTP with the broker failed; `what` says at which step.
    #[error("{what}: {error}")]
    Http {
        /// What was being done.
        what: String,
        /// hyper's error.
        error: hyper::Error,
    },
    /// The broker answered an API call with an error, in its words.
    #[error("{0}")]
    Refused(String),
}

impl ClientError {
    /// An HTTP failure at step `what`.
    pub(crate) fn http(what: &str) -> impl FnOnce(hyper::Error) -> Self + '_ {
        move |error| ClientError::Http {
            what: what.to_owned(),
            error,
        }
    }

    /// A request that could not be built (a path or header the caller gave).
    pub(crate) fn request(error: hyper::http::Error) -> Self {
        ClientError::Input(format!("cannot build the request: {error}"))
    }
}

/// The client's result.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
