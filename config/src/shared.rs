//! The configuration in force, shared by every service of a running broker, and what a reload may
//! change of it. [`SharedConfig`] is one atomically swapped [`Config`]: a reader takes the whole
//! configuration as it is at that moment (never half of an old one and half of a new one), and a
//! reload replaces it at once. [`Change`] compares the file in force with a new one: a reload takes
//! the customer catalogue (customers, targets, policies, webhooks, SIEM sinks, identity providers); every other section
//! is bound into listeners, keys and threads at start, so a new value there refuses the reload and
//! names the key to put back or the restart to do.

use std::sync::Arc;

use arc_swap::ArcSwap;
use sallyport_ids::CustomerId;

use crate::{Config, ConfigError, Customer};

/// The configuration in force, swapped whole by a reload. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedConfig(Arc<ArcSwap<Config>>);

impl SharedConfig {
    /// Shares `config`.
    pub fn new(config: Config) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The configuration in force now. Hold it for one decision, not across reloads.
    pub fn load(&self) -> Arc<Config> {
        self.0.load_full()
    }

    /// Puts `config` in force.
    pub fn store(&self, config: Arc<Config>) {
        self.0.store(config);
    }
}

impl From<Config> for SharedConfig {
    fn from(config: Config) -> Self {
        Self::new(config)
    }
}

/// What a new configuration changes of the one in force, customer by customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Customers only the new file has.
    pub added: Vec<CustomerId>,
    /// Customers only the old file has.
    pub removed: Vec<CustomerId>,
    /// Customers in both whose policy text, targets, time zone, webhook or SIEM sinks differ.
    pub changed: Vec<CustomerId>,
}

impl Change {
    /// Compares `new` with `old`. A section a reload cannot apply (everything but `customers`)
    /// that differs is an error naming it.
    pub fn between(old: &Config, new: &Config) -> Result<Change, ConfigError> {
        restart_only(old, new)?;
        let mut change = Change::default();
        for c in &new.customers {
            match old.customer(c.id.as_str()) {
                None => change.added.push(c.id.clone()),
                Some(was) if !same_customer(was, c) => change.changed.push(c.id.clone()),
                Some(_) => {}
            }
        }
        for c in &old.customers {
            if new.customer(c.id.as_str()).is_none() {
                change.removed.push(c.id.clone());
            }
        }
        Ok(change)
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Whether a customer reads the same in both files: policy text, targets, time zone, webhook and
/// SIEM sinks. SIEM sinks are compared by what they print (their addresses), and their trust anchors
/// by the files named, so a new CA file under the same name is picked up by a restart, not a reload.
fn same_customer(a: &Customer, b: &Customer) -> bool {
    let webhook = match (&a.webhook, &b.webhook) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.url == y.url
                && x.secret == y.secret
                && x.max_attempts == y.max_attempts
                && x.first_backoff == y.first_backoff
        }
        _ => false,
    };
    let targets = a.targets.len() == b.targets.len()
        && a.targets.iter().zip(&b.targets).all(|(x, y)| {
            x.id == y.id
                && x.address == y.address
                && x.port == y.port
                && x.protocol == y.protocol
                && x.tags == y.tags
                && x.record == y.record
        });
    webhook
        && targets
        && a.timezone == b.timezone
        && a.policy.digest() == b.policy.digest()
        && a.policy_path == b.policy_path
        && format!("{:?}", a.siem) == format!("{:?}", b.siem)
        && a.oidc == b.oidc
}

/// The sections bound at start: a new value refuses the reload, naming the key.
fn restart_only(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let differs: Option<&str> = if old.listen != new.listen {
        Some("server.listen")
    } else if old.data_dir != new.data_dir {
        Some("server.data_dir")
    } else if old.trust_domain != new.trust_domain {
        Some("server.trust_domain")
    } else if old.public_address != new.public_address {
        Some("server.public_address")
    } else if old.worker_threads != new.worker_threads {
        Some("server.worker_threads")
    } else if old.tls != new.tls {
        Some("tls")
    } else if old.grants != new.grants {
        Some("grants")
    } else if old.limits != new.limits {
        Some("limits")
    } else if old.requests != new.requests {
        Some("requests")
    } else if old.audit != new.audit {
        Some("audit")
    } else if old.admin.listen != new.admin.listen {
        Some("admin.listen")
    } else if old.web != new.web {
        Some("web")
    } else if old.provider_oidc != new.provider_oidc {
        Some("provider.oidc")
    } else {
        None
    };
    match differs {
        None => Ok(()),
        Some(field) => Err(ConfigError {
            location: new.file.display().to_string(),
            field: field.into(),
            message: "changed since the broker started; a reload applies the customers (targets, \
                      policies, webhooks, SIEM sinks) only"
                .into(),
            fix: format!(
                "put `{field}` back as it was and reload again, or restart the broker to change it"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n[[customers.targets]]\nid = \"web\"\naddress = \"127.0.0.1:80\"\n";

    fn load(dir: &std::path::Path, text: &str) -> Config {
        let path = dir.join("sallyport.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    #[test]
    fn added_removed_and_changed_customers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
        std::fs::write(dir.path().join("globex.cedar"), "").unwrap();
        let old = load(dir.path(), BASE);
        let new = load(
            dir.path(),
            &format!("{BASE}[[customers]]\nid = \"globex\"\npolicy = \"globex.cedar\"\n"),
        );
        let change = Change::between(&old, &new).unwrap();
        assert_eq!(change.added, vec!["globex".parse::<CustomerId>().unwrap()]);
        assert!(change.removed.is_empty() && change.changed.is_empty());
        let back = Change::between(&new, &old).unwrap();
        assert_eq!(back.removed, vec!["globex".parse::<CustomerId>().unwrap()]);
        assert!(Change::between(&old, &old).unwrap().is_empty());
        // A new policy text changes its customer, even under the same file name.
        std::fs::write(
            dir.path().join("acme.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let edited = load(dir.path(), BASE);
        let change = Change::between(&old, &edited).unwrap();
        assert_eq!(change.changed, vec!["acme".parse::<CustomerId>().unwrap()]);
        let moved = load(dir.path(), &BASE.replace("127.0.0.1:80", "127.0.0.1:81"));
        assert_eq!(Change::between(&edited, &moved).unwrap().changed.len(), 1);
    }

    #[test]
    fn a_restart_only_section_refuses_the_reload_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
        let old = load(dir.path(), BASE);
        let mut new = old.clone();
        new.limits.max_connections += 1;
        let e = Change::between(&old, &new).unwrap_err();
        assert_eq!(e.field, "limits");
        assert!(e.fix.contains("restart the broker"), "{e}");
        let mut new = old.clone();
        new.listen = "127.0.0.1:2".parse().unwrap();
        assert_eq!(
            Change::between(&old, &new).unwrap_err().field,
            "server.listen"
        );
        let mut new = old.clone();
        new.admin.listen = Some("127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            Change::between(&old, &new).unwrap_err().field,
            "admin.listen"
        );
    }

    #[test]
    fn readers_see_the_swap_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
        let shared = SharedConfig::new(load(dir.path(), BASE));
        let before = shared.load();
        let mut next = (*before).clone();
        next.customers.clear();
        shared.store(Arc::new(next));
        assert_eq!(
            before.customers.len(),
            1,
            "a held configuration does not change"
        );
        assert!(shared.load().customers.is_empty());
    }
}
