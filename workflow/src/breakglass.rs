//! Break-glass: an administrator mints a grant for a technician's certificate without any approval
//! (`sallyport grant`), for an emergency the customer's approvers cannot answer in time. It is never
//! silent: the `grant_minted` record (with the administrator, the machine, the reason and ticket) is
//! on the customer's trail before the token exists, the grant is stored marked as break-glass (so it
//! is listed as such and can be revoked like any other), and the customer's webhook is told at once
//! (`grant_break_glass`).

use std::time::{Duration, SystemTime};

use sallyport_audit::{AuditEvent, EventKind, Operator, Outcome};
use sallyport_certs::grant::{GrantSigner, GrantSpec};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::{Customer, Target};
use sallyport_ids::time::rfc3339;
use sallyport_ids::{GrantId, Role};
use sallyport_notify::Notification;
use sallyport_store::{BreakGlass, GrantRecord};

use crate::terms::Words;
use crate::{Context, WorkflowError, view};

/// What to mint.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The customer.
    pub customer: &'a Customer,
    /// Its target.
    pub target: &'a Target,
    /// The technician's certificate, already checked against the broker's CA.
    pub technician: &'a PeerIdentity,
    /// Grant length (at most `grants.max_minutes`, checked by the caller).
    pub minutes: u32,
    /// Why ([`crate::terms::break_glass_reason`]).
    pub reason: Words,
    /// The incident or change ticket ([`crate::terms::ticket`]).
    pub ticket: Option<Words>,
    /// Who mints it, on which machine.
    pub operator: Operator,
}

/// A minted break-glass grant.
#[derive(Debug)]
pub struct Minted {
    /// The grant token (a certificate-bound JWT).
    pub token: String,
    /// The grant as stored.
    pub grant: GrantRecord,
}

/// How the operator is named on the record and in listings: the admin identity, else `user@host`.
pub fn operator_name(o: &Operator) -> String {
    match &o.identity {
        Some(id) => id.to_string(),
        None => format!("{}@{}", o.user, o.host),
    }
}

/// Mints a break-glass grant: recorded, stored and announced before the token is returned.
pub async fn mint(
    cx: &Context,
    signer: &GrantSigner,
    ask: Ask<'_>,
) -> Result<Minted, WorkflowError> {
    let peer = ask.technician;
    if peer.id.role() != Role::Technician {
        return Err(WorkflowError::invalid(
            "not_a_technician",
            format!("`{}` is not a technician's certificate", peer.id),
        ));
    }
    let now = SystemTime::now();
    // A grant never outlives the certificate it is bound to.
    let expires = (now + Duration::from_secs(u64::from(ask.minutes) * 60)).min(peer.not_after);
    let gid = GrantId::mint();
    let spec = GrantSpec {
        sub: peer.id.clone(),
        customer: ask.customer.id.clone(),
        target: ask.target.id.clone(),
        port: ask.target.port,
        gid: gid.clone(),
        not_before: now,
        expires_at: expires,
        cert_thumbprint: peer.thumbprint,
    };
    let (token, claims) = signer.mint(&spec).map_err(|e| {
        tracing::error!(error = %e, "minting a break-glass grant failed");
        WorkflowError::SigningFailed
    })?;
    let (nbf, exp) = (
        i64::try_from(claims.nbf).unwrap_or(i64::MAX),
        i64::try_from(claims.exp).unwrap_or(i64::MAX),
    );
    let by = operator_name(&ask.operator);
    let reason = ask.reason.as_str().to_owned();
    let ticket = ask.ticket.as_ref().map(|t| t.as_str().to_owned());
    let grant = GrantRecord {
        id: gid.clone(),
        request_id: None,
        customer: ask.customer.id.clone(),
        target: ask.target.id.clone(),
        technician: peer.id.clone(),
        not_before: nbf,
        expires_at: exp,
        revoked: None,
        // The token is returned only after its record is durable.
        audited: true,
        break_glass: Some(BreakGlass {
            by: by.clone(),
            reason: reason.clone(),
            ticket: ticket.clone(),
        }),
    };
    let mut ev = AuditEvent::new(
        EventKind::GrantMinted,
        Outcome::Success,
        format!("break-glass, without approval: {reason}"),
    );
    ev.customer = Some(ask.customer.id.clone());
    ev.actor = Some(format!("break-glass:{by}"));
    ev.target = Some(ask.target.id.to_string());
    ev.subject = Some(peer.id.clone());
    ev.grant_id = Some(gid.clone());
    ev.minutes = Some(ask.minutes);
    ev.ticket = ticket.clone();
    ev.not_before = Some(rfc3339(nbf));
    ev.expires_at = Some(rfc3339(exp));
    ev.operator = Some(ask.operator.clone());
    // On the trail first: no break-glass grant exists unrecorded. Then stored, so that it is listed
    // and can be revoked; one that cannot be stored is not issued, and the trail says so.
    cx.record(ev.clone()).await?;
    let stored = grant.clone();
    if let Err(e) = cx.db.run(move |s| s.record_grant(&stored)).await {
        let mut failed = ev;
        failed.outcome = Outcome::Failure;
        failed.reason = format!("not stored, so not issued: {e}");
        if let Err(e) = cx.trail.append(failed).await {
            tracing::error!(error = %e, "could not audit a break-glass grant that was not stored");
        }
        return Err(e.into());
    }
    let data = view::grant(&grant);
    cx.notify(Notification {
        customer: ask.customer.id.clone(),
        event: "grant_break_glass".into(),
        text: format!(
            "BREAK-GLASS: {by} gave {} {} minutes on {}/{} without approval: {reason}{} (grant {gid}; revoke it with `sallyport revoke {gid}`)",
            peer.id.short(),
            ask.minutes,
            ask.customer.id,
            ask.target.id,
            ticket
                .as_deref()
                .map(|t| format!(" (ticket {t})"))
                .unwrap_or_default(),
        ),
        data,
    });
    tracing::warn!(grant = %gid, customer = %ask.customer.id, target = %ask.target.id, technician = %peer.id, by = %by, "break-glass grant minted");
    Ok(Minted { token, grant })
}
