//! Locks: an identity (every certificate of a SPIFFE id) or one certificate (serial and SHA-256
//! fingerprint) barred from everything, or from one customer, until it is unlocked or its end time
//! passes. A provider admin locks any identity but their own, everywhere (or for one customer); a
//! customer's approvers lock technicians, for that customer only ([`rules`]).
//!
//! - [`Locks::lock`] is on the trail (`identity_locked`) before it takes effect in this broker: the
//!   live tunnels it bars are cut at once (also when the record could not be written: ending access
//!   is always safe, and the caller is told), and the customers concerned hear of it through their
//!   webhooks ([`rules::chains`]).
//! - [`Locks::unlock`] is on the trail (`identity_unlocked`) before access returns; without the
//!   record, the lock stays.
//! - [`LockGate::admit`] is the one check, on every CONNECT and every `/v1` call (grant fetches and
//!   filings with the customer they concern): a fast in-memory [`LockView`] (at most
//!   [`rules::MAX_ACTIVE_LOCKS`] locks, indexed by SPIFFE id and by fingerprint). A refusal is
//!   recorded as `auth_failure` with the `lock_id`, in this one place.
//! - [`Locks::refresh`] (every [`REFRESH`], [`Locks::run_refresh`]) reloads the view when the store
//!   says the locks changed, so locks made by another process (`certs issue --replace`) apply
//!   within seconds, cut their tunnels and are announced; ended locks drop out.
//! - [`crl`] keeps an optional CRL of locked certificates signed by the CA; [`offline`] registers
//!   issued certificates and locks the ones a new certificate replaces.

pub mod crl;
pub mod offline;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_certs::identity::{PeerIdentity, certificate_serial};
use sallyport_ids::cert::{CertFingerprint, CertSerial};
use sallyport_ids::time::rfc3339;
use sallyport_ids::{CustomerId, LockId, SpiffeId, TrustDomain};
use sallyport_notify::Notification;
use sallyport_store::{LockRecord, LockTarget, NewLock, StoreError};
use tokio_util::sync::CancellationToken;

use crate::terms::Words;
use crate::{Caller, Context, LiveTunnels, WorkflowError};

pub use rules::MAX_ACTIVE_LOCKS;

/// How often the view is checked against the store for locks made elsewhere.
pub const REFRESH: Duration = Duration::from_secs(2);

/// One active lock, as the view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    /// Lock id.
    pub id: LockId,
    /// What it bars.
    pub target: LockTarget,
    /// `None`: everywhere; else this customer only.
    pub customer: Option<CustomerId>,
    /// Why.
    pub reason: String,
    /// Who locked.
    pub created_by: String,
    /// When it ends by itself.
    pub expires_at: Option<i64>,
}

impl Active {
    fn of(rec: &LockRecord) -> Self {
        let l = &rec.lock;
        Self {
            id: l.id.clone(),
            target: l.target.clone(),
            customer: l.customer.clone(),
            reason: l.reason.clone(),
            created_by: l.created_by.clone(),
            expires_at: l.expires_at,
        }
    }

    /// Whether it bars `peer` at `now` from what concerns `customer`.
    pub fn applies(&self, peer: &PeerIdentity, customer: Option<&CustomerId>, now: i64) -> bool {
        self.expires_at.is_none_or(|end| end > now)
            && rules::applies(
                &self.target,
                self.customer.as_ref(),
                &peer.id,
                &peer.thumbprint,
                customer,
            )
    }

    /// What a refused caller is told: what is locked, where, by whom, until when, and why.
    pub fn refusal(&self) -> String {
        let what = match &self.target {
            LockTarget::Identity(_) => "this identity is locked".to_owned(),
            LockTarget::Certificate { .. } => "this certificate is locked".to_owned(),
        };
        let scope = match &self.customer {
            Some(c) => format!(" for customer `{c}`"),
            None => String::new(),
        };
        let until = match self.expires_at {
            Some(end) => format!(" until {}", rfc3339(end)),
            None => " until unlocked".to_owned(),
        };
        format!(
            "{what}{scope} by {}{until} (lock `{}`): {}",
            sallyport_ids::short(&self.created_by),
            self.id,
            self.reason
        )
    }
}

/// The active locks, indexed for the checks on every connection and call.
#[derive(Debug, Default)]
struct Index {
    /// The store's lock version this index was loaded at.
    version: i64,
    by_id: HashMap<SpiffeId, Vec<Arc<Active>>>,
    by_cert: HashMap<[u8; 32], Vec<Arc<Active>>>,
    ids: HashSet<LockId>,
}

impl Index {
    fn of(locks: impl IntoIterator<Item = Arc<Active>>, version: i64) -> Self {
        let mut ix = Index {
            version,
            ..Index::default()
        };
        for a in locks {
            ix.add(a);
        }
        ix
    }

    fn add(&mut self, a: Arc<Active>) {
        if !self.ids.insert(a.id.clone()) {
            return;
        }
        match &a.target {
            LockTarget::Identity(id) => self.by_id.entry(id.clone()).or_default().push(a),
            LockTarget::Certificate { sha256, .. } => {
                self.by_cert.entry(*sha256.digest()).or_default().push(a);
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Active>> {
        self.by_id.values().chain(self.by_cert.values()).flatten()
    }
}

/// The active locks in memory: a lookup by SPIFFE id and one by fingerprint per check. Changes
/// (rare) replace the index; checks (every connection and call) only read it.
#[derive(Debug, Default)]
pub struct LockView {
    index: RwLock<Arc<Index>>,
}

impl LockView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, ix: Index) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ix);
    }

    /// The lock that bars `peer` at `now` from what concerns `customer` (`None`: the API as a whole,
    /// which only locks everywhere bar), if any.
    pub fn check(
        &self,
        peer: &PeerIdentity,
        customer: Option<&CustomerId>,
        now: i64,
    ) -> Option<Arc<Active>> {
        let ix = self.index.read().unwrap_or_else(|p| p.into_inner());
        if ix.ids.is_empty() {
            return None;
        }
        ix.by_id
            .get(&peer.id)
            .into_iter()
            .chain(ix.by_cert.get(&peer.thumbprint))
            .flatten()
            .find(|a| a.applies(peer, customer, now))
            .cloned()
    }

    /// How many locks the view holds (some may have ended since it was loaded).
    pub fn len(&self) -> usize {
        self.current().ids.len()
    }

    /// How many of the locks the view holds are still in force at `now` (`sallyport_locks_active`).
    pub fn active_at(&self, now: i64) -> usize {
        self.current()
            .all()
            .filter(|a| a.expires_at.is_none_or(|end| end > now))
            .count()
    }

    /// Whether the view holds no lock.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn version(&self) -> i64 {
        self.current().version
    }

    fn insert(&self, a: Arc<Active>) {
        let cur = self.current();
        let mut ix = Index::of(cur.all().cloned(), cur.version);
        ix.add(a);
        self.set(ix);
    }

    fn remove(&self, id: &LockId) {
        let cur = self.current();
        let ix = Index::of(cur.all().filter(|a| a.id != *id).cloned(), cur.version);
        self.set(ix);
    }

    /// Replaces the view with the active locks `recs` (store `version`); returns those it did not
    /// hold before.
    fn replace(&self, recs: &[LockRecord], version: i64) -> Vec<Arc<Active>> {
        let before = self.current();
        let fresh: Vec<Arc<Active>> = recs.iter().map(|r| Arc::new(Active::of(r))).collect();
        let new = fresh
            .iter()
            .filter(|a| !before.ids.contains(&a.id))
            .cloned()
            .collect();
        self.set(Index::of(fresh, version));
        new
    }
}

/// The lock check, shared by the gateway, the API and the request workflow. Cheap to clone.
#[derive(Clone)]
pub struct LockGate {
    view: Arc<LockView>,
    cx: Context,
}

impl std::fmt::Debug for LockGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGate").finish_non_exhaustive()
    }
}

impl LockGate {
    /// A gate over `view`, recording refusals on `cx`'s trail.
    pub fn new(view: Arc<LockView>, cx: Context) -> Self {
        Self { view, cx }
    }

    /// The view it checks.
    pub fn view(&self) -> &Arc<LockView> {
        &self.view
    }

    /// Lets `caller` through unless a lock bars them from what concerns `customer` (`None`: the API
    /// as a whole). A refusal is recorded (`auth_failure` with the `lock_id`, on `customer`'s chain
    /// or the broker's) and returned as [`WorkflowError::Locked`]; it stands even if the record
    /// cannot be written. `customer` must be a configured customer.
    pub async fn admit(
        &self,
        caller: Caller<'_>,
        customer: Option<&CustomerId>,
    ) -> Result<(), WorkflowError> {
        let Some(lock) = self.view.check(caller.peer, customer, self.cx.clock.unix()) else {
            return Ok(());
        };
        let why = lock.refusal();
        tracing::info!(peer = %caller.peer.id, source_ip = %caller.ip, lock = %lock.id, "locked identity refused");
        let mut ev = AuditEvent::new(EventKind::AuthFailure, Outcome::Deny, why.clone());
        ev.customer = customer.cloned();
        ev.actor = Some(caller.peer.id.to_string());
        ev.source_ip = Some(caller.ip);
        ev.lock_id = Some(lock.id.clone());
        // Bounded like every refusal: the first ones of an interval one by one, then an aggregate.
        let by = crate::refusals::RefusedBy::Identity(caller.peer.id.to_string());
        if let Err(e) = self.cx.refusals.refused(by, ev, false).await {
            tracing::error!(error = %e, "could not audit the refusal of a locked identity");
        }
        Err(WorkflowError::Locked(why))
    }
}

/// What a caller asks to lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockAsk {
    /// An identity, by SPIFFE id.
    pub spiffe_id: Option<String>,
    /// Or one certificate.
    pub certificate: Option<CertAsk>,
    /// Only this customer's access (admins; an approver's lock is always for their customer).
    pub customer: Option<String>,
    /// Why.
    pub reason: String,
    /// End, RFC 3339.
    pub expires_at: Option<String>,
    /// Or end, in minutes from now.
    pub minutes: Option<u64>,
}

/// A certificate, by serial and fingerprint, or the certificate itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertAsk {
    /// Its serial, hex.
    pub serial: Option<String>,
    /// The SHA-256 of its DER, hex.
    pub sha256: Option<String>,
    /// Or the certificate, PEM.
    pub pem: Option<String>,
}

/// What a lock did.
#[derive(Debug, Clone)]
pub struct Locked {
    /// The lock.
    pub lock: LockRecord,
    /// Live tunnels it cut.
    pub sessions_closed: usize,
}

/// Locking, unlocking, listing and refreshing. Cheap to clone.
#[derive(Clone)]
pub struct Locks {
    inner: Arc<Inner>,
}

struct Inner {
    cx: Context,
    gate: LockGate,
    tunnels: Arc<dyn LiveTunnels>,
    /// Replaced whole by a reload.
    customers: std::sync::RwLock<Arc<Vec<CustomerId>>>,
    trust_domain: TrustDomain,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    crl: Option<Arc<crl::Crl>>,
    /// One change at a time (lock, unlock, refresh): the view and the store stay in step.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks").finish_non_exhaustive()
    }
}

/// What [`Locks`] is built from.
pub struct LocksParts {
    /// The store, trail, webhooks and clock.
    pub cx: Context,
    /// The check it keeps up to date.
    pub gate: LockGate,
    /// The live tunnels it cuts.
    pub tunnels: Arc<dyn LiveTunnels>,
    /// The configured customers (their chains and webhooks).
    pub customers: Vec<CustomerId>,
    /// The PKI's trust domain (SPIFFE ids outside it are refused).
    pub trust_domain: TrustDomain,
    /// Checks that a certificate given whole was issued by the broker CA.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The CRL to keep, when `tls.crl` is on.
    pub crl: Option<Arc<crl::Crl>>,
}

impl Locks {
    /// The configured customers now.
    fn customers(&self) -> Arc<Vec<CustomerId>> {
        self.inner
            .customers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configured customers, after a reload: a lock names, records on and announces to these.
    pub fn set_customers(&self, customers: Vec<CustomerId>) {
        *self
            .inner
            .customers
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(customers);
    }

    /// Locks over `parts`. Call [`Locks::load`] before serving.
    pub fn new(parts: LocksParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                cx: parts.cx,
                gate: parts.gate,
                tunnels: parts.tunnels,
                customers: std::sync::RwLock::new(Arc::new(parts.customers)),
                trust_domain: parts.trust_domain,
                verifier: parts.verifier,
                crl: parts.crl,
                changing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The gate it keeps up to date.
    pub fn gate(&self) -> &LockGate {
        &self.inner.gate
    }

    /// The CRL, when kept.
    pub fn crl(&self) -> Option<&Arc<crl::Crl>> {
        self.inner.crl.as_ref()
    }

    /// Loads the active locks into the view (at start-up: nothing is cut or announced) and signs
    /// the first CRL.
    pub async fn load(&self) -> Result<usize, WorkflowError> {
        let _g = self.inner.changing.lock().await;
        let (version, recs) = self.active_now().await?;
        self.inner.gate.view.replace(&recs, version);
        self.publish_crl().await;
        Ok(recs.len())
    }

    async fn active_now(&self) -> Result<(i64, Vec<LockRecord>), WorkflowError> {
        let now = self.inner.cx.clock.unix();
        Ok(self
            .inner
            .cx
            .db
            .run(move |s| Ok((s.locks_version()?, s.locks(Some(now), MAX_ACTIVE_LOCKS)?)))
            .await?)
    }

    /// Locks what `ask` names, as `caller`.
    pub async fn lock(&self, caller: Caller<'_>, ask: LockAsk) -> Result<Locked, WorkflowError> {
        let me = &self.inner;
        // Reasons and times are checked before the identity they are about.
        let reason = crate::terms::lock_reason(&ask.reason)?;
        let now = me.cx.clock.unix();
        let expires_at = rules::end_time(ask.expires_at.as_deref(), ask.minutes, now)?;
        let target = self.target(ask.spiffe_id, ask.certificate).await?;
        let asked = match ask.customer {
            Some(c) => Some(
                c.parse::<CustomerId>()
                    .ok()
                    .filter(|c| self.customers().contains(c))
                    .ok_or_else(|| WorkflowError::NotFound(format!("no customer `{c}`")))?,
            ),
            None => None,
        };
        let actor = &caller.peer.id;
        let customer = rules::lock_scope(actor, target.holder(), asked.as_ref())?;
        let new = NewLock {
            id: LockId::mint(),
            target,
            customer,
            reason: reason.as_str().to_owned(),
            created_by: actor.to_string(),
            created_at: now,
            expires_at,
        };
        let _g = me.changing.lock().await;
        let stored = new.clone();
        let rec = me
            .cx
            .db
            .run(move |s| s.add_lock(&stored, MAX_ACTIVE_LOCKS))
            .await?;
        // On the trail before it takes effect here; it takes effect whether or not the record
        // could be written, since ending access is always safe.
        let recorded = self
            .record(&rec, EventKind::IdentityLocked, Some(caller.ip))
            .await;
        let active = Arc::new(Active::of(&rec));
        me.gate.view.insert(active.clone());
        let cut = self.cut(&active);
        self.publish_crl().await;
        drop(_g);
        if let Err(e) = recorded {
            tracing::error!(lock = %rec.lock.id, "a lock could not be audited (it applies regardless)");
            return Err(e);
        }
        self.announce(&rec, "identity_locked", cut);
        tracing::info!(lock = %rec.lock.id, target = %rules::describe(&rec.lock.target), scope = %rules::describe_scope(rec.lock.customer.as_ref()), sessions_closed = cut, "identity locked");
        Ok(Locked {
            lock: rec,
            sessions_closed: cut,
        })
    }

    /// What `spiffe_id` or `certificate` names.
    async fn target(
        &self,
        spiffe_id: Option<String>,
        certificate: Option<CertAsk>,
    ) -> Result<LockTarget, WorkflowError> {
        let me = &self.inner;
        match (spiffe_id, certificate) {
            (Some(_), Some(_)) => Err(WorkflowError::invalid(
                "bad_target",
                "give `spiffe_id` or `certificate`, not both",
            )),
            (None, None) => Err(WorkflowError::invalid(
                "bad_target",
                "say what to lock: `spiffe_id`, or `certificate` with `serial` and `sha256` (or `pem`)",
            )),
            (Some(id), None) => {
                let id: SpiffeId = id.parse().map_err(|e: sallyport_ids::IdError| {
                    WorkflowError::invalid("bad_spiffe_id", e.to_string())
                })?;
                if *id.trust_domain() != me.trust_domain {
                    return Err(WorkflowError::invalid(
                        "bad_spiffe_id",
                        format!(
                            "`{id}` is not in this broker's trust domain `{}`",
                            me.trust_domain
                        ),
                    ));
                }
                Ok(LockTarget::Identity(id))
            }
            (
                None,
                Some(CertAsk {
                    serial,
                    sha256,
                    pem: Some(pem),
                }),
            ) => {
                if serial.is_some() || sha256.is_some() {
                    return Err(WorkflowError::invalid(
                        "bad_certificate",
                        "give the certificate's `pem`, or its `serial` and `sha256`, not both",
                    ));
                }
                self.certificate_from_pem(&pem)
            }
            (
                None,
                Some(CertAsk {
                    serial: Some(serial),
                    sha256: Some(sha256),
                    pem: None,
                }),
            ) => {
                let bad = |e: sallyport_ids::IdError| {
                    WorkflowError::invalid("bad_certificate", e.to_string())
                };
                let serial: CertSerial = serial.parse().map_err(bad)?;
                let sha256: CertFingerprint = sha256.parse().map_err(bad)?;
                let registered = me.cx.db.run(move |s| s.certificate(&sha256)).await?;
                if let Some(c) = &registered
                    && c.serial != serial
                {
                    return Err(WorkflowError::invalid(
                        "bad_certificate",
                        format!(
                            "the certificate with that fingerprint has serial `{}`, not `{serial}`",
                            c.serial
                        ),
                    ));
                }
                Ok(LockTarget::Certificate {
                    serial,
                    sha256,
                    holder: registered.map(|c| c.holder),
                })
            }
            (None, Some(_)) => Err(WorkflowError::invalid(
                "bad_certificate",
                "name the certificate by both `serial` and `sha256`, or give its `pem`",
            )),
        }
    }

    /// A certificate given whole: it must be one the broker CA issued and still valid.
    fn certificate_from_pem(&self, pem: &str) -> Result<LockTarget, WorkflowError> {
        let me = &self.inner;
        let bad = |m: String| WorkflowError::invalid("bad_certificate", m);
        let certs = sallyport_certs::tls::certs_from_pem(pem, "certificate.pem")
            .map_err(|e| bad(e.to_string()))?;
        let Some(leaf) = certs.first() else {
            return Err(bad("no certificate in `pem`".into()));
        };
        me.verifier
            .verify_client_cert(leaf, &[] as &[CertificateDer<'_>], UnixTime::now())
            .map_err(|e| {
                bad(format!(
                    "not a valid certificate of this broker's CA ({e}); an expired certificate needs no lock"
                ))
            })?;
        let peer =
            PeerIdentity::from_der(leaf, &me.trust_domain).map_err(|e| bad(e.to_string()))?;
        let serial = certificate_serial(leaf).map_err(|e| bad(e.to_string()))?;
        Ok(LockTarget::Certificate {
            serial,
            sha256: peer.fingerprint(),
            holder: Some(peer.id),
        })
    }

    /// Lifts lock `id` as `caller`. On the trail before access returns.
    pub async fn unlock(
        &self,
        caller: Caller<'_>,
        id: &LockId,
        reason: Option<Words>,
    ) -> Result<LockRecord, WorkflowError> {
        let me = &self.inner;
        let not_found = || WorkflowError::NotFound(format!("no lock `{id}`"));
        let lookup = id.clone();
        let rec = match me.cx.db.run(move |s| s.lock(&lookup)).await {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let actor = &caller.peer.id;
        if !rules::sees(actor, &rec.lock) {
            return Err(not_found());
        }
        rules::may_unlock(actor, &rec.lock)?;
        let now = me.cx.clock.unix();
        if let Some(u) = &rec.unlocked {
            return Err(WorkflowError::Conflict(format!(
                "lock `{id}` was already lifted by {} at {}",
                sallyport_ids::short(&u.by),
                rfc3339(u.at)
            )));
        }
        if let Some(end) = rec.lock.expires_at.filter(|end| *end <= now) {
            return Err(WorkflowError::Conflict(format!(
                "lock `{id}` already ended at {}",
                rfc3339(end)
            )));
        }
        let _g = me.changing.lock().await;
        let mut lifted = rec.clone();
        lifted.unlocked = Some(sallyport_store::Unlock {
            at: now,
            by: actor.to_string(),
            reason: reason.as_ref().map(|r| r.as_str().to_owned()),
        });
        // No access returns before its record is durable.
        self.record(&lifted, EventKind::IdentityUnlocked, Some(caller.ip))
            .await?;
        let (lid, by, why) = (
            id.clone(),
            actor.to_string(),
            reason.map(|r| r.as_str().to_owned()),
        );
        let done = me
            .cx
            .db
            .run(move |s| s.unlock(&lid, &by, why.as_deref(), now))
            .await?;
        me.gate.view.remove(id);
        self.publish_crl().await;
        drop(_g);
        self.announce(&done, "identity_unlocked", 0);
        tracing::info!(lock = %id, by = %actor, "lock lifted");
        Ok(done)
    }

    /// The locks `caller` may see, newest first: active ones, or with `all` also lifted and ended
    /// ones (at most 1000).
    pub async fn list(
        &self,
        caller: Caller<'_>,
        all: bool,
    ) -> Result<Vec<LockRecord>, WorkflowError> {
        let now = self.inner.cx.clock.unix();
        let (at, limit) = if all {
            (None, 1000)
        } else {
            (Some(now), MAX_ACTIVE_LOCKS)
        };
        let recs = self.inner.cx.db.run(move |s| s.locks(at, limit)).await?;
        let viewer = &caller.peer.id;
        Ok(recs
            .into_iter()
            .filter(|r| rules::sees(viewer, &r.lock))
            .collect())
    }

    /// Reloads the view when the store's locks changed (or ended); locks made by another process
    /// cut their tunnels and are announced now. Re-signs the CRL when due.
    pub async fn refresh(&self) -> Result<(), WorkflowError> {
        let me = &self.inner;
        let version = me.cx.db.run(|s| s.locks_version()).await?;
        let now = me.cx.clock.unix();
        let due = me.crl.as_ref().is_some_and(|c| c.due(now));
        if version == me.gate.view.version() && !due {
            return Ok(());
        }
        let _g = me.changing.lock().await;
        let (version, recs) = self.active_now().await?;
        let new = me.gate.view.replace(&recs, version);
        for a in &new {
            let cut = self.cut(a);
            if let Some(rec) = recs.iter().find(|r| r.lock.id == a.id) {
                self.announce(rec, "identity_locked", cut);
            }
            tracing::info!(lock = %a.id, sessions_closed = cut, "a lock made elsewhere now applies");
        }
        self.publish_crl().await;
        Ok(())
    }

    /// Refreshes every [`REFRESH`] until `shutdown`.
    pub async fn run_refresh(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::error!(error = %e, "could not refresh the locks");
            }
        }
    }

    /// Cuts every live tunnel `lock` bars; returns how many.
    fn cut(&self, lock: &Active) -> usize {
        let cause = format!("identity locked (lock {})", lock.id);
        self.inner.tunnels.end_where(
            &|s, thumbprint| {
                rules::applies(
                    &lock.target,
                    lock.customer.as_ref(),
                    &s.technician,
                    thumbprint,
                    Some(&s.customer),
                )
            },
            &cause,
        )
    }

    /// Records `rec` (a lock or its lifting) on every chain it concerns, and waits until each
    /// record is durable.
    async fn record(
        &self,
        rec: &LockRecord,
        kind: EventKind,
        ip: Option<std::net::IpAddr>,
    ) -> Result<(), WorkflowError> {
        let evs = events(rec, kind, &self.customers(), ip);
        let mut pending = tokio::task::JoinSet::new();
        for ev in evs {
            let trail = self.inner.cx.trail.clone();
            pending.spawn(async move { trail.append(ev).await });
        }
        let mut failed = false;
        while let Some(done) = pending.join_next().await {
            if !matches!(done, Ok(Ok(_))) {
                failed = true;
            }
        }
        if failed {
            tracing::error!(lock = %rec.lock.id, "audit trail not writable");
            return Err(WorkflowError::AuditUnavailable);
        }
        Ok(())
    }

    /// Tells the customers concerned, through their webhooks.
    fn announce(&self, rec: &LockRecord, event: &str, cut: usize) {
        let l = &rec.lock;
        let (who, text) = match &rec.unlocked {
            Some(u) => (
                &u.by,
                format!(
                    "{} unlocked {} {} (lock {}){}",
                    sallyport_ids::short(&u.by),
                    rules::describe(&l.target),
                    rules::describe_scope(l.customer.as_ref()),
                    l.id,
                    u.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            ),
            None => (
                &l.created_by,
                format!(
                    "{} locked {} {} (lock {}; {cut} live session(s) closed): {}",
                    sallyport_ids::short(&l.created_by),
                    rules::describe(&l.target),
                    rules::describe_scope(l.customer.as_ref()),
                    l.id,
                    l.reason
                ),
            ),
        };
        let mut data = view(rec, self.inner.cx.clock.unix());
        data["event"] = event.into();
        data["sessions_closed"] = cut.into();
        tracing::debug!(by = %who, lock = %l.id, event, "announcing");
        for customer in rules::chains(l, &self.customers()).into_iter().flatten() {
            self.inner.cx.notify(Notification {
                customer,
                event: event.into(),
                text: text.clone(),
                data: data.clone(),
            });
        }
    }

    async fn publish_crl(&self) {
        if let Some(crl) = &self.inner.crl
            && let Err(e) = crl
                .publish(&self.inner.cx.db, self.inner.cx.clock.unix())
                .await
        {
            tracing::error!(error = %e, "could not publish the CRL");
        }
    }
}

/// The records of `rec` (`identity_locked`, or `identity_unlocked` once lifted), one per chain it
/// concerns ([`rules::chains`]).
pub fn events(
    rec: &LockRecord,
    kind: EventKind,
    customers: &[CustomerId],
    ip: Option<std::net::IpAddr>,
) -> Vec<AuditEvent> {
    let l = &rec.lock;
    let (actor, reason) = match (&rec.unlocked, kind) {
        (Some(u), EventKind::IdentityUnlocked) => (
            u.by.clone(),
            format!(
                "unlocked {} {}: {}",
                rules::describe(&l.target),
                rules::describe_scope(l.customer.as_ref()),
                u.reason.as_deref().unwrap_or("no reason given")
            ),
        ),
        _ => (
            l.created_by.clone(),
            format!(
                "locked {} {}{}: {}",
                rules::describe(&l.target),
                rules::describe_scope(l.customer.as_ref()),
                l.expires_at
                    .map(|e| format!(" until {}", rfc3339(e)))
                    .unwrap_or_default(),
                l.reason
            ),
        ),
    };
    rules::chains(l, customers)
        .into_iter()
        .map(|chain| {
            let mut ev = AuditEvent::new(kind, Outcome::Success, reason.clone());
            ev.customer = chain;
            ev.actor = Some(actor.clone());
            ev.subject = l.target.holder().cloned();
            ev.source_ip = ip;
            ev.lock_id = Some(l.id.clone());
            ev.lock_scope = Some(
                l.customer
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), ToString::to_string),
            );
            if let LockTarget::Certificate { serial, sha256, .. } = &l.target {
                ev.cert_serial = Some(serial.clone());
                ev.cert_sha256 = Some(*sha256);
            }
            ev.expires_at = l.expires_at.map(rfc3339);
            ev
        })
        .collect()
}

/// The JSON shape of a lock, as the API answers and webhooks carry it (`now` says whether it is
/// active).
pub fn view(rec: &LockRecord, now: i64) -> serde_json::Value {
    let l = &rec.lock;
    let certificate = match &l.target {
        LockTarget::Certificate { serial, sha256, .. } => {
            serde_json::json!({ "serial": serial, "sha256": sha256 })
        }
        LockTarget::Identity(_) => serde_json::Value::Null,
    };
    serde_json::json!({
        "id": l.id,
        "kind": l.target.kind(),
        "spiffe_id": l.target.holder(),
        "certificate": certificate,
        "customer": l.customer,
        "reason": l.reason,
        "created_by": l.created_by,
        "created_at": rfc3339(l.created_at),
        "expires_at": l.expires_at.map(rfc3339),
        "active": rec.active_at(now),
        "unlocked_at": rec.unlocked.as_ref().map(|u| rfc3339(u.at)),
        "unlocked_by": rec.unlocked.as_ref().map(|u| &u.by),
        "unlock_reason": rec.unlocked.as_ref().and_then(|u| u.reason.as_ref()),
    })
}

#[cfg(test)]
mod tests;
