//! Sign-in settings: the `[web]` listener (HTTPS without a client certificate, for sign-in and the
//! web console), the provider's identity provider (`[provider.oidc]`, technicians and admins) and
//! each customer's own (`[customers.oidc]`, its approvers and auditors). Validated here; the
//! `oidc` crate speaks to the IdPs and the workflow applies the rules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use sallyport_ids::ProviderId;
use serde::Deserialize;
use toml::Spanned;

use crate::ConfigError;
use crate::sinks::WebhookTarget;
use crate::validate::Validator;

/// The most hours a sign-in certificate may be valid for (`cert_hours`).
pub const MAX_CERT_HOURS: u32 = 24;

/// The most groups a sign-in list names, and the longest group name.
const MAX_GROUPS: usize = 64;

/// A secret read from a file: never printed, never compared but in constant time by its user.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// `[web]`: the sign-in (and console) listener.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    /// Where it listens; `None`: no sign-in listener (the default), so no sign-in.
    pub listen: Option<SocketAddr>,
    /// The URL people's browsers reach it at (`https://HOST[:PORT]`, no path); default
    /// `https://` + the address it listens on. IdP redirects come back to `<public_url>/oidc/callback`.
    pub public_url: Option<String>,
    /// Its certificate (default `tls.cert`).
    pub cert: PathBuf,
    /// Its key (default `tls.key`).
    pub key: PathBuf,
}

/// One OpenID provider the broker signs people in at.
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer, exactly as the IdP's discovery document and tokens spell it.
    pub issuer: String,
    /// The broker's client id at that IdP: the `aud` of its ID tokens.
    pub client_id: String,
    /// The client secret (`client_secret_file`), for confidential clients.
    pub client_secret: Option<Secret>,
    /// The ID token claim holding the person's groups.
    pub groups_claim: String,
    /// The ID token claim the person's name in Sallyport is taken from.
    pub name_claim: String,
    /// Refuse sign-ins (and signed decisions) without multi-factor authentication.
    pub require_mfa: bool,
    /// How long a certificate issued on a sign-in is valid.
    pub cert_validity: Duration,
    /// The CA file trusted for the IdP (`ca`), if not the Mozilla roots.
    pub ca: Option<PathBuf>,
    /// The TLS client for the IdP.
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("groups_claim", &self.groups_claim)
            .field("name_claim", &self.name_claim)
            .field("require_mfa", &self.require_mfa)
            .field("cert_validity", &self.cert_validity)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl PartialEq for OidcSettings {
    /// Equal when every setting is; the TLS client by the CA file it was built from.
    fn eq(&self, o: &Self) -> bool {
        self.issuer == o.issuer
            && self.client_id == o.client_id
            && self.client_secret == o.client_secret
            && self.groups_claim == o.groups_claim
            && self.name_claim == o.name_claim
            && self.require_mfa == o.require_mfa
            && self.cert_validity == o.cert_validity
            && self.ca == o.ca
    }
}

/// `[provider.oidc]`: the provider's IdP, where technicians and admins sign in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSignIn {
    /// The IdP.
    pub oidc: OidcSettings,
    /// The provider technicians signing in there work for (their SPIFFE id's provider).
    pub provider: ProviderId,
    /// Members of any of these groups sign in as admins.
    pub admin_groups: Vec<String>,
    /// When not empty, only members of one of these groups sign in as technicians.
    pub technician_groups: Vec<String>,
}

/// `[customers.oidc]`: a customer's own IdP, where its approvers and auditors sign in and where
/// every approval and denial of its requests is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerSignIn {
    /// The IdP.
    pub oidc: OidcSettings,
    /// Members of any of these groups are its approvers.
    pub approver_groups: Vec<String>,
    /// Members of any of these groups are its auditors.
    pub auditor_groups: Vec<String>,
}

/// `[web]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileWeb {
    #[serde(default)]
    pub(crate) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) public_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) cert: Option<String>,
    #[serde(default)]
    pub(crate) key: Option<String>,
}

/// `[provider]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileProvider {
    #[serde(default)]
    pub(crate) oidc: Option<FileOidc>,
}

/// `[provider.oidc]` and `[customers.oidc]` as written; the group lists of the other side are
/// refused by validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileOidc {
    pub(crate) issuer: Spanned<String>,
    pub(crate) client_id: Spanned<String>,
    #[serde(default)]
    pub(crate) client_secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) ca: Option<Spanned<String>>,
    #[serde(default = "d_groups_claim")]
    pub(crate) groups_claim: String,
    #[serde(default = "d_name_claim")]
    pub(crate) name_claim: String,
    #[serde(default)]
    pub(crate) require_mfa: bool,
    #[serde(default = "d_cert_hours")]
    pub(crate) cert_hours: Spanned<u32>,
    #[serde(default)]
    pub(crate) provider: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) admin_groups: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) technician_groups: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) approver_groups: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) auditor_groups: Option<Spanned<Vec<String>>>,
}

fn d_groups_claim() -> String {
    "groups".into()
}

fn d_name_claim() -> String {
    "preferred_username".into()
}

fn d_cert_hours() -> Spanned<u32> {
    Spanned::new(0..0, 8)
}

/// The provider id of technicians signing in when `[provider.oidc] provider` is not set.
pub const DEFAULT_PROVIDER: &str = "provider";

impl Validator<'_> {
    /// `[web]`: an address other than the broker's and the admin listener's.
    pub(crate) fn web(
        &self,
        w: &FileWeb,
        taken: &[(SocketAddr, &str)],
        tls_cert: &std::path::Path,
        tls_key: &std::path::Path,
    ) -> Result<WebSettings, ConfigError> {
        let listen = match &w.listen {
            None => None,
            Some(at) => {
                let addr: SocketAddr = at.get_ref().parse().map_err(|e| {
                    self.err(
                        at,
                        "web.listen",
                        format!("`{}` is not an address: {e}", at.get_ref()),
                        "use IP:PORT, e.g. \"127.0.0.1:8444\"; remove the key to turn sign-in off",
                    )
                })?;
                if let Some((_, key)) = taken.iter().find(|(a, _)| a.port() != 0 && *a == addr) {
                    return Err(self.err(
                        at,
                        "web.listen",
                        format!("{addr} is also {key}"),
                        "give the sign-in listener a port of its own, e.g. \"127.0.0.1:8444\"",
                    ));
                }
                Some(addr)
            }
        };
        let public_url = match &w.public_url {
            None => None,
            Some(u) => {
                let text = u.get_ref().trim_end_matches('/');
                let ok = text.parse::<Uri>().ok().is_some_and(|uri| {
                    uri.scheme_str() == Some("https")
                        && uri.authority().is_some()
                        && uri.path() == "/"
                        && uri.query().is_none()
                });
                if !ok {
                    return Err(self.err(
                        u,
                        "web.public_url",
                        format!("`{}` is not an https://HOST[:PORT] URL", u.get_ref()),
                        "give the URL browsers reach the sign-in listener at, e.g. \"https://sallyport.example.com\", without a path",
                    ));
                }
                Some(text.to_owned())
            }
        };
        Ok(WebSettings {
            listen,
            public_url,
            cert: w
                .cert
                .as_deref()
                .map_or_else(|| tls_cert.to_owned(), |p| self.rel(p)),
            key: w
                .key
                .as_deref()
                .map_or_else(|| tls_key.to_owned(), |p| self.rel(p)),
        })
    }

    /// Each IdP signs for one side only: a customer's issuer is neither the provider's nor another
    /// customer's, else people of one would pass as people of the other (the tenant wall is the
    /// issuer a certificate's sign-in names).
    pub(crate) fn distinct_issuers(
        &self,
        provider: Option<&ProviderSignIn>,
        customers: &[crate::Customer],
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, String)> = Vec::new();
        if let Some(p) = provider {
            seen.push((&p.oidc.issuer, "[provider.oidc]".into()));
        }
        for (ci, c) in customers.iter().enumerate() {
            let Some(o) = &c.oidc else { continue };
            let issuer = o.oidc.issuer.trim_end_matches('/');
            if let Some((_, other)) = seen.iter().find(|(i, _)| i.trim_end_matches('/') == issuer) {
                return Err(ConfigError {
                    location: self.loc(None),
                    field: format!("customers[{ci}].oidc.issuer"),
                    message: format!(
                        "`{}` is also the issuer of {other}: its people would pass as `{}`'s",
                        o.oidc.issuer, c.id
                    ),
                    fix: "give each customer its own identity provider (tenant), distinct from the provider's".into(),
                });
            }
            seen.push((&o.oidc.issuer, format!("customer `{}`", c.id)));
        }
        Ok(())
    }

    /// `[provider.oidc]`.
    pub(crate) fn provider_signin(&self, o: &FileOidc) -> Result<ProviderSignIn, ConfigError> {
        let field = |k: &str| format!("provider.oidc.{k}");
        for (list, key) in [
            (&o.approver_groups, "approver_groups"),
            (&o.auditor_groups, "auditor_groups"),
        ] {
            if let Some(l) = list {
                return Err(self.err(
                    l,
                    &field(key),
                    "the provider's IdP signs in technicians and admins, not a customer's people"
                        .into(),
                    &format!(
                        "move `{key}` to the `[customers.oidc]` of the customer whose people they are"
                    ),
                ));
            }
        }
        let provider = match &o.provider {
            None => DEFAULT_PROVIDER.parse().map_err(|_| ConfigError {
                location: self.loc(None),
                field: field("provider"),
                message: "the default provider id was refused".into(),
                fix: "set `provider`".into(),
            })?,
            Some(p) => p.get_ref().parse().map_err(|e| {
                self.err(
                    p,
                    &field("provider"),
                    format!("{e}"),
                    "use the provider's short lowercase name, e.g. \"northwind\"",
                )
            })?,
        };
        Ok(ProviderSignIn {
            oidc: self.oidc(o, &field)?,
            provider,
            admin_groups: self.groups(&o.admin_groups, &field("admin_groups"))?,
            technician_groups: self.groups(&o.technician_groups, &field("technician_groups"))?,
        })
    }

    /// `[customers.oidc]` of customer number `ci`.
    pub(crate) fn customer_signin(
        &self,
        o: &FileOidc,
        ci: usize,
    ) -> Result<CustomerSignIn, ConfigError> {
        let field = |k: &str| format!("customers[{ci}].oidc.{k}");
        for (list, key) in [
            (&o.admin_groups, "admin_groups"),
            (&o.technician_groups, "technician_groups"),
        ] {
            if let Some(l) = list {
                return Err(self.err(
                    l,
                    &field(key),
                    "a customer's IdP signs in its approvers and auditors, not provider staff"
                        .into(),
                    &format!("move `{key}` to `[provider.oidc]`"),
                ));
            }
        }
        if let Some(p) = &o.provider {
            return Err(self.err(
                p,
                &field("provider"),
                "`provider` names the provider of technicians signing in at the provider's IdP"
                    .into(),
                "remove it here; set it in `[provider.oidc]`",
            ));
        }
        let approver_groups = self.groups(&o.approver_groups, &field("approver_groups"))?;
        let auditor_groups = self.groups(&o.auditor_groups, &field("auditor_groups"))?;
        if approver_groups.is_empty() && auditor_groups.is_empty() {
            return Err(self.err(
                &o.issuer,
                &field("approver_groups"),
                "no group is named, so nobody at this IdP could approve or audit".into(),
                "list the customer's IdP groups, e.g. approver_groups = [\"sallyport-approvers\"] and auditor_groups = [\"sallyport-auditors\"]",
            ));
        }
        Ok(CustomerSignIn {
            oidc: self.oidc(o, &field)?,
            approver_groups,
            auditor_groups,
        })
    }

    fn groups(
        &self,
        list: &Option<Spanned<Vec<String>>>,
        field: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        if list.get_ref().len() > MAX_GROUPS {
            return Err(self.err(
                list,
                field,
                format!("{} groups is more than {MAX_GROUPS}", list.get_ref().len()),
                "name at most 64 groups; use one IdP group for the role",
            ));
        }
        for g in list.get_ref() {
            if g.is_empty() || g.len() > 256 || g.chars().any(char::is_control) {
                return Err(self.err(
                    list,
                    field,
                    format!("`{g}` is not a group name"),
                    "write each group exactly as the IdP puts it into the groups claim",
                ));
            }
        }
        Ok(list.get_ref().clone())
    }

    fn oidc(
        &self,
        o: &FileOidc,
        field: &dyn Fn(&str) -> String,
    ) -> Result<OidcSettings, ConfigError> {
        // Kept exactly as written: tokens must name it so, and some IdPs end theirs with `/`.
        let issuer = o.issuer.get_ref().clone();
        let uri: Uri = issuer.parse().map_err(|e| {
            self.err(
                &o.issuer,
                &field("issuer"),
                format!("`{issuer}` is not a URL: {e}"),
                "use the IdP's issuer URL, e.g. \"https://login.microsoftonline.com/TENANT/v2.0\"",
            )
        })?;
        if let Some(m) = WebhookTarget::url_problem(&uri) {
            return Err(self.err(
                &o.issuer,
                &field("issuer"),
                m.replace("webhook URL", "issuer"),
                "use the IdP's https:// issuer URL (http:// only on loopback, for tests)",
            ));
        }
        let client_id = o.client_id.get_ref().trim().to_owned();
        if client_id.is_empty() || client_id.len() > 256 {
            return Err(self.err(
                &o.client_id,
                &field("client_id"),
                "empty or longer than 256 characters".into(),
                "use the client (application) id the IdP gave the broker's registration",
            ));
        }
        let client_secret = match &o.client_secret_file {
            None => None,
            Some(f) => {
                let path = self.rel(f.get_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        f,
                        &field("client_secret_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                        "point `client_secret_file` at a file holding the client secret the IdP issued",
                    )
                })?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(self.err(
                        f,
                        &field("client_secret_file"),
                        format!("`{}` is empty", path.display()),
                        "write the client secret the IdP issued into it",
                    ));
                }
                Some(Secret(secret.to_owned()))
            }
        };
        for (value, key) in [
            (&o.groups_claim, "groups_claim"),
            (&o.name_claim, "name_claim"),
        ] {
            if value.is_empty() || value.len() > 128 {
                return Err(self.err(
                    &o.issuer,
                    &field(key),
                    format!("`{value}` is not a claim name"),
                    "name the ID token claim, e.g. \"groups\" or \"preferred_username\"",
                ));
            }
        }
        let hours = *o.cert_hours.get_ref();
        if !(1..=MAX_CERT_HOURS).contains(&hours) {
            return Err(self.err(
                &o.cert_hours,
                &field("cert_hours"),
                format!("{hours} is out of range"),
                "use 1 to 24 (default 8): a sign-in certificate lasts a working day at most",
            ));
        }
        let (ca, tls) = match &o.ca {
            None => (None, sallyport_certs::tls::default_client()),
            Some(ca) => {
                let path = self.rel(ca.get_ref());
                let bad = |m: String| {
                    self.err(
                        ca,
                        &field("ca"),
                        m,
                        "point `ca` at the PEM certificates that sign the IdP's certificate",
                    )
                };
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| bad(format!("cannot read `{}`: {e}", path.display())))?;
                let tls = sallyport_certs::tls::client_trusting(&pem, &path.display().to_string())
                    .map_err(|e| bad(e.to_string()))?;
                (Some(path), tls)
            }
        };
        Ok(OidcSettings {
            issuer,
            client_id,
            client_secret,
            groups_claim: o.groups_claim.clone(),
            name_claim: o.name_claim.clone(),
            require_mfa: o.require_mfa,
            cert_validity: Duration::from_secs(u64::from(hours) * 3600),
            ca,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:8443\"\n";
    const ACME: &str = "[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n[customers.oidc]\nissuer = \"https://acme.example/\"\nclient_id = \"broker\"\n";

    fn parse(text: &str) -> Result<Config, crate::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        Config::parse(&dir.path().join("sallyport.toml"), text)
    }

    #[test]
    fn sign_in_settings_are_read_with_their_defaults() {
        let c = parse(&format!(
            "{BASE}[web]\nlisten = \"127.0.0.1:8444\"\n[provider.oidc]\nissuer = \"http://127.0.0.1:9000\"\nclient_id = \"sp\"\nclient_secret_file = \"secret\"\nadmin_groups = [\"ops\"]\n{ACME}approver_groups = [\"approvers\"]\n"
        ))
        .unwrap();
        assert_eq!(c.web.listen, Some("127.0.0.1:8444".parse().unwrap()));
        assert!(c.web.cert.ends_with("pki/server.pem"));
        let p = c.provider_oidc.unwrap();
        assert_eq!(p.provider.as_str(), super::DEFAULT_PROVIDER);
        assert_eq!(p.oidc.client_secret.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{:?}", p.oidc).contains("s3cret"));
        assert_eq!(p.oidc.groups_claim, "groups");
        assert_eq!(p.oidc.name_claim, "preferred_username");
        assert_eq!(p.oidc.cert_validity.as_secs(), 8 * 3600);
        let acme = c.customers[0].oidc.as_ref().unwrap();
        // The issuer is kept exactly as written: tokens must name it so.
        assert_eq!(acme.oidc.issuer, "https://acme.example/");
        assert_eq!(acme.approver_groups, ["approvers"]);
    }

    #[test]
    fn bad_sign_in_settings_name_the_key_and_the_fix() {
        for (text, field, needle) in [
            (
                format!("{BASE}[web]\nlisten = \"127.0.0.1:8443\"\n"),
                "web.listen",
                "is also server.listen",
            ),
            (
                format!(
                    "{BASE}[provider.oidc]\nissuer = \"https://acme.example/\"\nclient_id = \"sp\"\n{ACME}approver_groups = [\"a\"]\n"
                ),
                "customers[0].oidc.issuer",
                "also the issuer of [provider.oidc]",
            ),
            (
                format!("{BASE}[web]\npublic_url = \"http://x.example\"\n"),
                "web.public_url",
                "is not an https://",
            ),
            (
                format!("{BASE}{ACME}"),
                "customers[0].oidc.approver_groups",
                "nobody at this IdP",
            ),
            (
                format!("{BASE}{ACME}approver_groups = [\"a\"]\nadmin_groups = [\"x\"]\n"),
                "customers[0].oidc.admin_groups",
                "not provider staff",
            ),
            (
                format!(
                    "{BASE}[provider.oidc]\nissuer = \"http://idp.example\"\nclient_id = \"sp\"\n"
                ),
                "provider.oidc.issuer",
                "loopback",
            ),
            (
                format!(
                    "{BASE}[provider.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"sp\"\napprover_groups = [\"a\"]\n"
                ),
                "provider.oidc.approver_groups",
                "not a customer's people",
            ),
            (
                format!(
                    "{BASE}[provider.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"sp\"\ncert_hours = 48\n"
                ),
                "provider.oidc.cert_hours",
                "out of range",
            ),
            (
                format!(
                    "{BASE}[provider.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"sp\"\nclient_secret_file = \"gone\"\n"
                ),
                "provider.oidc.client_secret_file",
                "cannot read",
            ),
        ] {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(!err.fix.is_empty());
        }
    }
}
