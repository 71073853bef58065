//! Reloading the configuration without a restart (`SIGHUP`, `POST /v1/reload`). One reload at a
//! time, in this order:
//!
//! 1. The file is read and validated again, with every policy. A bad file is refused with its error
//!    (`config_reload_refused` on `_broker`), and the configuration in force keeps serving.
//! 2. Only the customer catalogue may change ([`Change::between`]); a new value in a section bound
//!    at start refuses the reload, naming the key.
//! 3. On the trail before it takes effect: each customer added or changed gets `policy_loaded` with
//!    its new digest and `config_reloaded`; each customer removed gets `config_reloaded` on its own
//!    chain (a provider cannot drop a customer unseen); `_broker` gets `config_reloaded` with what
//!    changed. A record that cannot be written refuses the reload.
//! 4. The new configuration goes in force at once for every service: new decisions, filings and
//!    API calls use it; webhooks and SIEM forwarding are restarted for the customers whose settings
//!    changed; locks and refusals know the new customers.
//! 5. Every live tunnel is checked again under it, and those it no longer allows are closed with
//!    reason `policy changed`.
//! 6. Each customer concerned is told through its webhook (`config_changed`).

use std::collections::HashMap;
use std::sync::Arc;

use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_config::{Change, Config, ConfigError, SharedConfig};
use sallyport_ids::CustomerId;
use sallyport_notify::Notification;
use sallyport_notify::siem::{Forwarders, Sink};
use sallyport_store::SessionRecord;

use crate::{Context, LiveTunnels, Locks, WorkflowError};

/// The close reason of a tunnel a reload no longer allows.
pub const POLICY_CHANGED: &str = "policy changed";

/// Applies the broker's command-line overrides (listen address, threads, ...) to a newly loaded
/// file, as at start, so a reload compares like with like.
pub type Overrides = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// Why a reload was refused; the configuration in force is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid, or changes what only a restart may.
    #[error("{0}")]
    Config(ConfigError),
    /// The reload could not be recorded.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Customers added, changed and removed.
    pub change: Change,
    /// Each customer in force now, with its policy digest.
    pub policies: Vec<(CustomerId, String)>,
    /// The tunnels closed, each with what changed.
    pub closed: Vec<(SessionRecord, String)>,
}

/// Reloads. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    config: SharedConfig,
    overrides: Overrides,
    cx: Context,
    tunnels: Arc<dyn LiveTunnels>,
    locks: Locks,
    siem: Option<Arc<Forwarders>>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// What a [`Reloader`] is built from.
pub struct ReloaderParts {
    /// The configuration in force, which a reload replaces.
    pub config: SharedConfig,
    /// The command line's overrides.
    pub overrides: Overrides,
    /// The trail, store, webhooks, clock and refusals.
    pub cx: Context,
    /// The live tunnels it checks again.
    pub tunnels: Arc<dyn LiveTunnels>,
    /// Locks (which customers exist).
    pub locks: Locks,
    /// SIEM forwarding, when it runs.
    pub siem: Option<Arc<Forwarders>>,
}

/// The SIEM sinks of `config`.
pub fn sinks(config: &Config, metrics: &sallyport_metrics::Metrics) -> Vec<Sink> {
    config
        .customers
        .iter()
        .flat_map(|c| {
            c.siem.iter().enumerate().map(|(index, kind)| Sink {
                customer: c.id.clone(),
                index,
                kind: kind.clone(),
                metrics: metrics.siem_sink(&c.id, index),
            })
        })
        .collect()
}

/// The webhooks of `config`, by customer.
pub fn webhooks(config: &Config) -> HashMap<CustomerId, sallyport_config::WebhookTarget> {
    config
        .customers
        .iter()
        .filter_map(|c| Some((c.id.clone(), c.webhook.clone()?)))
        .collect()
}

impl Reloader {
    /// A reloader over `parts`.
    pub fn new(parts: ReloaderParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: parts.config,
                overrides: parts.overrides,
                cx: parts.cx,
                tunnels: parts.tunnels,
                locks: parts.locks,
                siem: parts.siem,
                busy: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Reloads the configuration file in force, for `by` (`SIGHUP`, or the admin's SPIFFE id);
    /// counted by outcome (`sallyport_config_reloads_total`).
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let done = self.reload_once(by).await;
        self.inner.cx.metrics.reloaded(match done {
            Ok(_) => sallyport_metrics::ReloadOutcome::Applied,
            Err(_) => sallyport_metrics::ReloadOutcome::Refused,
        });
        done
    }

    async fn reload_once(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let me = &self.inner;
        let _one = me.busy.lock().await;
        let old = me.config.load();
        let file = old.file.clone();
        let overrides = me.overrides.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Config::load(&file).map(|mut c| {
                overrides(&mut c);
                c
            })
        })
        .await
        .map_err(|e| {
            ReloadError::Config(ConfigError {
                location: old.file.display().to_string(),
                field: "(file)".into(),
                message: format!("reading the configuration failed: {e}"),
                fix: "try the reload again".into(),
            })
        })
        .and_then(|r| r.map_err(ReloadError::Config))
        .and_then(|new| {
            let change = Change::between(&old, &new).map_err(ReloadError::Config)?;
            Ok((new, change))
        });
        let (new, change) = match loaded {
            Ok(ok) => ok,
            Err(ReloadError::Config(e)) => {
                tracing::error!(error = %e, "reload refused; the configuration in force is unchanged");
                let mut ev = AuditEvent::new(
                    EventKind::ConfigReloadRefused,
                    Outcome::Failure,
                    e.to_string(),
                );
                ev.actor = Some(by.to_owned());
                if let Err(e) = me.cx.record(ev).await {
                    tracing::error!(error = %e, "could not record a refused reload");
                }
                return Err(ReloadError::Config(e));
            }
            Err(e) => return Err(e),
        };
        // On the trail before it takes effect.
        self.record(&new, &change, by).await?;
        let new = Arc::new(new);
        // A new customer's series exist before its first tunnel or request can count into them.
        for id in &change.added {
            me.cx.metrics.add_customer(id);
        }
        me.config.store(new.clone());
        let ids: Vec<CustomerId> = new.customers.iter().map(|c| c.id.clone()).collect();
        me.cx.refusals.set_customers(ids.iter().cloned());
        me.locks.set_customers(ids);
        let touched = |c: &CustomerId| change.changed.contains(c) || change.added.contains(c);
        me.cx.notifier.reconfigure(webhooks(&new), &touched);
        if let Some(siem) = &me.siem {
            siem.reconfigure(sinks(&new, &me.cx.metrics), &touched)
                .await;
        }
        let closed = me.tunnels.recheck(&new, me.cx.clock.now(), POLICY_CHANGED);
        for (s, why) in &closed {
            tracing::info!(session = %s.id, customer = %s.customer, technician = %s.technician, why = %why, "tunnel closed: policy changed");
        }
        self.announce(&new, &change, &closed);
        let policies = new
            .customers
            .iter()
            .map(|c| (c.id.clone(), c.policy.digest().to_owned()))
            .collect();
        tracing::info!(
            by,
            added = change.added.len(),
            changed = change.changed.len(),
            removed = change.removed.len(),
            closed = closed.len(),
            "configuration reloaded"
        );
        Ok(Reloaded {
            change,
            policies,
            closed,
        })
    }

    /// The reload's records: per customer concerned, then on `_broker`; every one durable.
    async fn record(&self, new: &Config, change: &Change, by: &str) -> Result<(), WorkflowError> {
        let cx = &self.inner.cx;
        for id in change.added.iter().chain(&change.changed) {
            let Some(c) = new.customer(id.as_str()) else {
                continue;
            };
            let what = if change.added.contains(id) {
                "customer added"
            } else {
                "customer's configuration changed"
            };
            let mut ev = AuditEvent::new(
                EventKind::ConfigReloaded,
                Outcome::Success,
                format!("{what} by a reload ({} target(s))", c.targets.len()),
            );
            ev.customer = Some(c.id.clone());
            ev.actor = Some(by.to_owned());
            ev.policy_digest = Some(c.policy.digest().to_owned());
            cx.record(ev).await?;
            crate::policies::record_one(cx, c, by).await?;
        }
        for id in &change.removed {
            let mut ev = AuditEvent::new(
                EventKind::ConfigReloaded,
                Outcome::Success,
                "customer removed from the broker's configuration by a reload".to_owned(),
            );
            ev.customer = Some(id.clone());
            ev.actor = Some(by.to_owned());
            cx.record(ev).await?;
        }
        let list = |ids: &[CustomerId]| {
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut ev = AuditEvent::new(
            EventKind::ConfigReloaded,
            Outcome::Success,
            format!(
                "configuration reloaded from {}: added {}; changed {}; removed {}",
                new.file.display(),
                list(&change.added),
                list(&change.changed),
                list(&change.removed)
            ),
        );
        ev.actor = Some(by.to_owned());
        ev.count = Some(new.customers.len() as u64);
        cx.record(ev).await
    }

    /// Tells each customer concerned, through its webhook (a removed customer's webhook is gone
    /// with it; its chain has the record).
    fn announce(&self, new: &Config, change: &Change, closed: &[(SessionRecord, String)]) {
        for id in change.added.iter().chain(&change.changed) {
            let Some(c) = new.customer(id.as_str()) else {
                continue;
            };
            let cut = closed.iter().filter(|(s, _)| &s.customer == id).count();
            let text = format!(
                "the provider changed {}'s configuration on the broker: policy {} ({} target(s)); {cut} live session(s) closed",
                c.id,
                c.policy.digest().get(..12).unwrap_or_default(),
                c.targets.len()
            );
            let data = serde_json::json!({
                "event": "config_changed",
                "customer": c.id,
                "added": change.added.contains(id),
                "policy_digest": c.policy.digest(),
                "policy_ids": c.policy.policy_ids(),
                "targets": c.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
                "sessions_closed": cut,
            });
            self.inner.cx.notify(Notification {
                customer: c.id.clone(),
                event: "config_changed".into(),
                text,
                data,
            });
        }
    }
}
