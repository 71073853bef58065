//! Sessions: listing them (bytes and durations; live ones with their bytes so far, from this
//! broker's tunnels) and ending one (that customer's approvers, the session's technician, or an
//! admin). Ending is on the trail before the tunnel records its close, and happens even when that
//! record cannot be written, since ending access is always safe. A listing of another customer's
//! or technician's sessions, and ending a session the caller may not, are refused and recorded
//! ([`Context::refused`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sallyport_audit::{AuditEvent, EventKind, Outcome};
use sallyport_ids::{CustomerId, GrantId, Role, SessionId, SpiffeId};
use sallyport_store::{SessionFilter, SessionRecord, StoreError};

use crate::refusals::{Attempt, Owner};
use crate::scope::Scope;
use crate::{Caller, Context, LiveTunnels, WorkflowError};

/// One listed session, and whether it is open now.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The session (a live one with its bytes so far).
    pub session: SessionRecord,
    /// Open now.
    pub live: bool,
    /// It runs under a break-glass grant (minted without approval).
    pub break_glass: bool,
}

/// Which sessions to list, as asked.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Only this customer's.
    pub customer: Option<String>,
    /// Only this technician's (SPIFFE id).
    pub technician: Option<String>,
    /// Only live ones.
    pub live: bool,
    /// Only this grant's.
    pub grant: Option<GrantId>,
}

/// Session listings and ends. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    cx: Context,
    tunnels: Arc<dyn LiveTunnels>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions over `cx` and the live `tunnels`.
    pub fn new(cx: Context, tunnels: Arc<dyn LiveTunnels>) -> Self {
        Self { cx, tunnels }
    }

    /// The sessions `caller` may see, newest first: live ones from the tunnels, the rest from the
    /// store (after the rows queued so far are written).
    pub async fn list(&self, caller: Caller<'_>, q: Asked) -> Result<Vec<Listed>, WorkflowError> {
        let (customer, technician) = match Scope::of(&caller.peer.id) {
            Scope::All => (q.customer, q.technician),
            Scope::Customer(c) => {
                if let Some(asked) = q.customer.as_ref().filter(|asked| **asked != c.as_str()) {
                    let no = WorkflowError::Forbidden(format!(
                        "you can only see sessions of customer `{c}`"
                    ));
                    let attempt = Attempt {
                        named: asked.parse().ok(),
                        ..Attempt::new(format!(
                            "list the sessions of customer `{}`",
                            sallyport_audit::clip(asked, 64)
                        ))
                    };
                    return Err(self.cx.refused(caller, attempt, no).await);
                }
                (Some(c.to_string()), q.technician)
            }
            Scope::Technician(t) => {
                if let Some(asked) = q
                    .technician
                    .as_ref()
                    .filter(|asked| **asked != t.to_string())
                {
                    let no = WorkflowError::Forbidden(
                        "technicians can only see their own sessions".into(),
                    );
                    let attempt = Attempt::new(format!(
                        "list the sessions of technician `{}`",
                        sallyport_audit::clip(asked, 128)
                    ));
                    return Err(self.cx.refused(caller, attempt, no).await);
                }
                (q.customer, Some(t.to_string()))
            }
        };
        // Filters are parsed once; one that is not an id names no session, live or stored.
        let (Ok(customer), Ok(technician)) = (
            customer.map(|c| c.parse::<CustomerId>()).transpose(),
            technician.map(|t| t.parse::<SpiffeId>()).transpose(),
        ) else {
            return Ok(Vec::new());
        };
        let grant = q.grant;
        let matches = |s: &SessionRecord| {
            customer.as_ref().is_none_or(|c| *c == s.customer)
                && technician.as_ref().is_none_or(|t| *t == s.technician)
                && grant.as_ref().is_none_or(|g| *g == s.grant_id)
        };
        // Live sessions, with their bytes so far, come from this broker's tunnels.
        let mut live: HashMap<SessionId, SessionRecord> = self
            .tunnels
            .snapshot()
            .into_iter()
            .filter(|s| matches(s))
            .map(|s| (s.id.clone(), s))
            .collect();
        let listed = |session: SessionRecord, live: bool| Listed {
            session,
            live,
            break_glass: false,
        };
        if q.live {
            let mut out: Vec<SessionRecord> = live.into_values().collect();
            out.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then(a.id.cmp(&b.id)));
            let out = out.into_iter().map(|s| listed(s, true)).collect();
            return self.mark_break_glass(out).await;
        }
        // Everything queued before now is in the store after this.
        self.tunnels.flush().await;
        let filter = SessionFilter {
            customer,
            technician,
            grant,
            ..SessionFilter::default()
        };
        let stored = self.cx.db.run(move |s| s.sessions(&filter)).await?;
        let mut out: Vec<Listed> = stored
            .into_iter()
            .map(|s| match live.remove(&s.id) {
                Some(l) => listed(l, true),
                None => listed(s, false),
            })
            .collect();
        out.extend(live.into_values().map(|l| listed(l, true)));
        self.mark_break_glass(out).await
    }

    /// Marks the sessions that run under break-glass grants.
    async fn mark_break_glass(&self, mut out: Vec<Listed>) -> Result<Vec<Listed>, WorkflowError> {
        let mut grants: Vec<GrantId> = out.iter().map(|l| l.session.grant_id.clone()).collect();
        grants.sort();
        grants.dedup();
        let glass: HashSet<GrantId> = self
            .cx
            .db
            .run(move |s| {
                let mut glass = HashSet::new();
                for g in grants {
                    match s.grant(&g) {
                        Ok(rec) if rec.break_glass.is_some() => {
                            glass.insert(g);
                        }
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(glass)
            })
            .await?;
        for l in &mut out {
            l.break_glass = glass.contains(&l.session.grant_id);
        }
        Ok(out)
    }

    /// Ends live session `id` as `caller`; returns the session.
    pub async fn end(
        &self,
        caller: Caller<'_>,
        id: &SessionId,
    ) -> Result<SessionRecord, WorkflowError> {
        let scope = Scope::of(&caller.peer.id);
        let not_found = || WorkflowError::NotFound(format!("no session `{id}`"));
        let attempt = |s: Option<&SessionRecord>| Attempt {
            session_id: Some(id.clone()),
            owner: s.map(|s| Owner {
                customer: s.customer.clone(),
                technician: Some(s.technician.clone()),
                target: Some(s.target.to_string()),
                grant_id: Some(s.grant_id.clone()),
            }),
            ..Attempt::new(format!("end session `{id}`"))
        };
        let sid = id.clone();
        let Some(rec) = self.tunnels.get(&sid) else {
            // A session that just closed has its row written after this.
            self.tunnels.flush().await;
            let hidden = match self.cx.db.run(move |s| s.session(&sid)).await {
                Ok(s) if scope.sees(&s.customer, &s.technician) => {
                    return Err(WorkflowError::Conflict(match &s.close_reason {
                        Some(why) => format!("session `{id}` is already closed ({why})"),
                        None => format!("session `{id}` is not live on this broker"),
                    }));
                }
                Ok(s) => Some(s),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            return Err(self
                .cx
                .refused(caller, attempt(hidden.as_ref()), not_found())
                .await);
        };
        if !scope.sees(&rec.customer, &rec.technician) {
            return Err(self
                .cx
                .refused(caller, attempt(Some(&rec)), not_found())
                .await);
        }
        if caller.peer.id.role() == Role::Auditor {
            let no = WorkflowError::Forbidden("auditors cannot end sessions".into());
            return Err(self.cx.refused(caller, attempt(Some(&rec)), no).await);
        }
        let actor = caller.peer.id.to_string();
        let mut ev = AuditEvent::new(
            EventKind::SessionEnded,
            Outcome::Success,
            "session ended through the API",
        );
        ev.customer = Some(rec.customer.clone());
        ev.actor = Some(actor.clone());
        ev.target = Some(rec.target.to_string());
        ev.subject = Some(rec.technician.clone());
        ev.grant_id = Some(rec.grant_id.clone());
        ev.session_id = Some(rec.id.clone());
        ev.source_ip = Some(caller.ip);
        // On the trail before the tunnel records its close; ended either way, since ending is safe.
        let recorded = self.cx.record(ev).await;
        self.tunnels.end(&rec.id, &format!("ended by {actor}"));
        recorded?;
        tracing::info!(session = %rec.id, by = %actor, "session ended through the API");
        Ok(rec)
    }
}
