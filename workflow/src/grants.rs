//! Grant listings (break-glass ones marked, each party seeing what its scope allows) and
//! revocation: that customer's approvers, the grant's technician or an admin revoke a grant. It is
//! on the trail before the tunnels it cuts record their closes; every live tunnel of the grant is
//! cut at once, whether or not the record could be written (ending access is always safe), and the
//! token is refused from then on (the gateway reads the revocation from the store). Anyone else
//! learns nothing (`NotFound`); the customer's auditors are told they cannot (`Forbidden`). Both
//! refusals are recorded ([`Context::refused`]).

use std::sync::Arc;

use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_ids::{CustomerId, GrantId, Principal};
use sallyport_notify::Notification;
use sallyport_store::{GrantRecord, Revocation, StoreError};

use crate::refusals::{Attempt, Owner};
use crate::scope::Scope;
use crate::terms::Words;
use crate::{Caller, Context, LiveTunnels, WorkflowError};

/// What a revocation did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The grant.
    pub grant: GrantRecord,
    /// The revocation that stands (the first one, if the grant was revoked before).
    pub revocation: Revocation,
    /// Live tunnels of the grant closed now.
    pub sessions_closed: usize,
}

/// Revocation of grants. Cheap to clone.
#[derive(Clone)]
pub struct Grants {
    cx: Context,
    tunnels: Arc<dyn LiveTunnels>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants").finish_non_exhaustive()
    }
}

impl Grants {
    /// Revocation over `cx`, cutting the tunnels of `tunnels`.
    pub fn new(cx: Context, tunnels: Arc<dyn LiveTunnels>) -> Self {
        Self { cx, tunnels }
    }

    /// The grants `caller` may see, newest first (at most 1000): an admin's of every customer (or of
    /// `customer`), an approver's or auditor's of their customer, a technician's own; with
    /// `break_glass_only`, only those minted without approval.
    pub async fn list(
        &self,
        caller: Caller<'_>,
        customer: Option<String>,
        break_glass_only: bool,
    ) -> Result<Vec<GrantRecord>, WorkflowError> {
        let (customer, technician) = match Scope::of(&caller.peer.id) {
            Scope::All => (customer, None),
            Scope::Customer(c) => {
                if customer.as_ref().is_some_and(|asked| *asked != c.as_str()) {
                    return Err(WorkflowError::Forbidden(format!(
                        "you can only see grants of customer `{c}`"
                    )));
                }
                (Some(c.to_string()), None)
            }
            Scope::Technician(t) => (customer, Some(t)),
        };
        // A filter that is not an id names no grant.
        let Ok(customer) = customer.map(|c| c.parse::<CustomerId>()).transpose() else {
            return Ok(Vec::new());
        };
        Ok(self
            .cx
            .db
            .run(move |s| s.grants(customer.as_ref(), technician.as_ref(), break_glass_only))
            .await?)
    }

    /// Revokes grant `id` as `caller`, for `reason`.
    pub async fn revoke(
        &self,
        caller: Caller<'_>,
        gid: &GrantId,
        reason: Words,
    ) -> Result<Revoked, WorkflowError> {
        let reason = reason.as_str().to_owned();
        let not_found = || WorkflowError::NotFound(format!("no grant `{gid}`"));
        let attempt = |owner: Option<Owner>| Attempt {
            grant_id: Some(gid.clone()),
            owner,
            ..Attempt::new(format!("revoke grant `{gid}`"))
        };
        let lookup = gid.clone();
        let grant = match self.cx.db.run(move |s| s.grant(&lookup)).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => {
                return Err(self.cx.refused(caller, attempt(None), not_found()).await);
            }
            Err(e) => return Err(e.into()),
        };
        let owner = || Owner {
            customer: grant.customer.clone(),
            technician: Some(grant.technician.clone()),
            target: Some(grant.target.to_string()),
            grant_id: None,
        };
        // Tenants are walls: another customer's approver or another technician learns nothing.
        let actor = caller.peer.id.clone();
        let refusal = match actor.principal() {
            Principal::Admin { .. } => None,
            Principal::Technician { .. } if grant.technician == actor => None,
            Principal::Approver { customer, .. } if *customer == grant.customer => None,
            Principal::Auditor { customer, .. } if *customer == grant.customer => Some(
                WorkflowError::Forbidden("auditors cannot revoke grants".into()),
            ),
            _ => Some(not_found()),
        };
        if let Some(no) = refusal {
            return Err(self.cx.refused(caller, attempt(Some(owner())), no).await);
        }
        let at = self.cx.clock.unix();
        let (g, by, why) = (gid.clone(), actor.clone(), reason.clone());
        let (revoked, changed) = self.cx.db.run(move |s| s.revoke(&g, &by, &why, at)).await?;
        let revocation = revoked.revoked.clone().unwrap_or(Revocation {
            at,
            by: actor.clone(),
            reason: reason.clone(),
        });
        // The revocation is on the trail before the tunnels it cuts record their closes.
        let mut recorded = Ok(());
        if changed {
            let mut ev = AuditEvent::new(
                EventKind::GrantRevoked,
                Outcome::Success,
                // The revoker's words, as the grant shows them.
                revocation.reason.clone(),
            );
            ev.customer = Some(grant.customer.clone());
            ev.actor = Some(actor.to_string());
            ev.target = Some(grant.target.to_string());
            ev.subject = Some(grant.technician.clone());
            ev.grant_id = Some(grant.id.clone());
            ev.request_id = grant.request_id.clone();
            ev.source_ip = Some(caller.ip);
            recorded = self.cx.record(ev).await;
        }
        // Cut every live tunnel of the grant, whether or not the record could be written: ending
        // access is always safe. Each tunnel records its own close.
        let cut = self.tunnels.end_grant(gid, "grant revoked");
        if let Err(e) = recorded {
            tracing::error!("a revocation could not be audited (the grant is revoked regardless)");
            return Err(e);
        }
        if changed {
            self.cx.notify(Notification {
                customer: grant.customer.clone(),
                event: "grant_revoked".into(),
                text: format!(
                    "{} revoked {}'s access to {}/{} (grant {}): {}",
                    actor.short(),
                    grant.technician.short(),
                    grant.customer,
                    grant.target,
                    grant.id,
                    revocation.reason
                ),
                data: serde_json::json!({
                    "grant_id": grant.id,
                    "request_id": grant.request_id,
                    "customer": grant.customer,
                    "target": grant.target,
                    "technician": grant.technician,
                    "revoked_by": actor,
                    "reason": revocation.reason,
                    "sessions_closed": cut,
                }),
            });
        }
        tracing::info!(grant = %grant.id, customer = %grant.customer, sessions_closed = cut, "grant revoked");
        Ok(Revoked {
            grant: revoked,
            revocation,
            sessions_closed: cut,
        })
    }
}
