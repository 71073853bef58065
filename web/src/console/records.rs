//! The console's evidence pages: audit search over one customer's chain (the records as stored,
//! paged), the chain's status and a "verify now" that runs the verifier on it, exports (JSON
//! lines, OCSF) and a request's evidence bundle to download, and the access register of a period
//! (every grant: who asked, who approved and at which IdP, when and how long it was used, the
//! bytes, break-glass) as a page, CSV and a printable view. Which chain a person may read is the
//! workflow's rule ([`sallyport_workflow::Refusals::chain_to_read`]), as on `/v1/audit`.

use std::collections::HashMap;
use std::path::PathBuf;

use askama::Template;
use hyper::{Response, StatusCode};
use sallyport_audit::query::{Filter, parse_time, read};
use sallyport_audit::{checkpoint, segment};
use sallyport_ids::Role;
use sallyport_ids::time::now_unix;
use sallyport_workflow::WorkflowError;
use sallyport_workflow::error::parse_id;
use sallyport_workflow::sessions::Asked;

use super::Ctx;
use super::http::download;
use super::views::{Chrome, bytes, duration, render, when};
use crate::Body;

/// Records on one page of the search.
pub const PAGE: usize = 50;
/// The most records one export download carries (more: narrow the filter, or use the CLI).
pub const MAX_EXPORT: usize = 100_000;
/// The longest register period, in days.
pub const MAX_PERIOD_DAYS: i64 = 400;

/// A record as the search shows it.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// Its seq.
    pub seq: u64,
    /// When.
    pub time: String,
    /// The event.
    pub event: String,
    /// Its outcome.
    pub outcome: String,
    /// Who acted (short).
    pub actor: String,
    /// The target, or empty.
    pub target: String,
    /// What happened, in words.
    pub reason: String,
    /// The request it concerns, or empty.
    pub request: String,
    /// Signed at an IdP: its issuer, or empty.
    pub idp: String,
    /// The record as stored.
    pub raw: String,
}

/// The chain's state.
#[derive(Debug, Clone, Default)]
pub struct ChainStatus {
    /// The last signed checkpoint, in words, or empty.
    pub checkpoint: String,
    /// The outcome of "verify now", when run.
    pub verified: Option<(bool, String)>,
}

/// The audit search.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    /// The frame.
    pub chrome: Chrome,
    /// The chain shown (a customer id), or empty when an admin has not chosen one.
    pub chain: String,
    /// Whether the person may choose the chain (admins).
    pub choose: bool,
    /// The filter as typed: since, until, event, technician, target, outcome.
    pub f: HashMap<String, String>,
    /// Records found.
    pub rows: Vec<RecordRow>,
    /// The query of the next page, when there is one.
    pub next: Option<String>,
    /// The query of the filter (for the export links).
    pub query: String,
    /// The chain's state.
    pub status: ChainStatus,
    /// A problem with the filter, or empty.
    pub error: String,
}

impl AuditPage {
    /// A filter value as typed.
    pub fn v(&self, k: &str) -> String {
        self.f.get(k).cloned().unwrap_or_default()
    }
}

const FILTER_KEYS: [&str; 7] = [
    "customer",
    "since",
    "until",
    "event",
    "technician",
    "target",
    "outcome",
];

/// The filter of the query, and its query string (without paging).
fn filter_of(cx: &Ctx<'_>) -> Result<(Filter, HashMap<String, String>, String), String> {
    let mut typed = HashMap::new();
    for k in FILTER_KEYS {
        if let Some(v) = cx.req.q(k) {
            typed.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    let time = |k: &str| {
        typed
            .get(k)
            .map(|v| parse_time(v).map_err(|e| format!("`{k}`: {e}")))
            .transpose()
    };
    let after_seq = match cx.req.q("after_seq") {
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| "`after_seq` must be a record number".to_owned())?,
        ),
        None => None,
    };
    let filter = Filter {
        since: time("since")?,
        until: time("until")?,
        event: typed.get("event").cloned(),
        technician: typed.get("technician").cloned(),
        after_seq,
        target: typed.get("target").cloned(),
        outcome: typed.get("outcome").cloned(),
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            FILTER_KEYS
                .iter()
                .filter_map(|k| typed.get(*k).map(|v| (*k, v))),
        )
        .finish();
    Ok((filter, typed, query))
}

fn audit_dir(cx: &Ctx<'_>) -> PathBuf {
    cx.console.config.load().data_dir.join("audit")
}

/// The chain the person reads: theirs, or (admins) the one asked for, which must exist.
async fn chain(cx: &Ctx<'_>, asked: Option<String>) -> Result<String, WorkflowError> {
    let chain = cx
        .console
        .workflow
        .refusals
        .chain_to_read(cx.caller(), asked)
        .await?;
    let config = cx.console.config.load();
    if chain != sallyport_audit::BROKER_CHAIN && config.customer(&chain).is_none() {
        return Err(WorkflowError::NotFound(format!("no customer `{chain}`")));
    }
    Ok(chain)
}

fn row(line: &str) -> Option<RecordRow> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Some(RecordRow {
        seq: v["seq"].as_u64()?,
        time: s("time"),
        event: s("event"),
        outcome: s("outcome"),
        actor: sallyport_ids::short(&s("actor")),
        target: s("target"),
        reason: s("reason"),
        request: s("request_id"),
        idp: v["idp"]["issuer"].as_str().unwrap_or_default().to_owned(),
        raw: line.to_owned(),
    })
}

/// The last signed checkpoint of `chain`, in words.
fn last_checkpoint(audit: &std::path::Path, chain: &str, key: Option<&[u8]>) -> String {
    let path = segment::checkpoints_path(&segment::chain_dir(audit, chain));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        None => "no signed checkpoint yet".into(),
        Some(l) => match checkpoint::check(l, key) {
            Ok(cp) => format!("records up to seq {} signed at {}", cp.seq, cp.time),
            Err(e) => format!("the last checkpoint does not check: {e}"),
        },
    }
}

fn key_bytes(cx: &Ctx<'_>) -> Option<Vec<u8>> {
    cx.console.audit_key["public_key"]
        .as_str()
        .and_then(sallyport_certs::signing::public_key_from_b64)
}

/// `GET /console/audit`.
pub(crate) async fn audit(cx: &Ctx<'_>) -> Response<Body> {
    audit_page(cx, None).await
}

async fn audit_page(cx: &Ctx<'_>, verified: Option<(bool, String)>) -> Response<Body> {
    let choose = cx.session.peer.id.role() == Role::Admin;
    let mut page = AuditPage {
        chrome: cx.chrome("Audit", "/console/audit"),
        chain: String::new(),
        choose,
        f: HashMap::new(),
        rows: Vec::new(),
        next: None,
        query: String::new(),
        status: ChainStatus::default(),
        error: String::new(),
    };
    let (filter, typed, query) = match filter_of(cx) {
        Ok(x) => x,
        Err(e) => {
            page.error = e;
            return render(StatusCode::BAD_REQUEST, &page, None);
        }
    };
    page.f = typed;
    page.query = query.clone();
    let asked = cx.req.q("customer");
    if choose && asked.is_none() {
        return render(StatusCode::OK, &page, None);
    }
    let chain = match chain(cx, asked).await {
        Ok(c) => c,
        Err(e) => return cx.refused(&e),
    };
    let audit = audit_dir(cx);
    let key = key_bytes(cx);
    let dir = segment::chain_dir(&audit, &chain);
    let (lines, more) = match tokio::task::spawn_blocking(move || read(&dir, &filter, PAGE)).await {
        Ok(Ok(x)) => x,
        _ => {
            return cx.refused(&WorkflowError::Trail(sallyport_audit::AuditError::Record(
                "the audit trail could not be read".into(),
            )));
        }
    };
    page.rows = lines.iter().filter_map(|l| row(l)).collect();
    if more && let Some(last) = page.rows.last() {
        page.next = Some(format!("{query}&after_seq={}", last.seq));
    }
    page.status = ChainStatus {
        checkpoint: last_checkpoint(&audit, &chain, key.as_deref()),
        verified,
    };
    page.chain = chain;
    render(StatusCode::OK, &page, None)
}

/// `POST /console/audit/verify`: runs the verifier on the chain, with the audit key.
pub(crate) async fn verify(cx: &Ctx<'_>, form: &HashMap<String, String>) -> Response<Body> {
    let asked = form.get("customer").filter(|c| !c.is_empty()).cloned();
    let chain = match chain(cx, asked).await {
        Ok(c) => c,
        Err(e) => return cx.refused(&e),
    };
    let Some(_place) = cx.console.heavy.take() else {
        return super::Heavy::busy();
    };
    let audit = audit_dir(cx);
    let key = key_bytes(cx);
    let c = chain.clone();
    let report = tokio::task::spawn_blocking(move || {
        sallyport_audit::verify::verify(&audit, &c, key.as_deref(), &[])
    })
    .await;
    let verified = match report {
        Ok(r) => match &r.problem {
            None => (
                true,
                format!(
                    "The chain verifies: {} record(s), {} signed checkpoint(s), {} record(s) after the last checkpoint.",
                    r.records, r.checkpoints, r.unsigned
                ),
            ),
            Some(p) => (
                false,
                format!(
                    "The chain does NOT verify: {}: {}",
                    p.kind.as_str(),
                    p.detail
                ),
            ),
        },
        Err(_) => (false, "The verifier could not run.".into()),
    };
    tracing::info!(peer = %cx.session.peer.id, chain = %chain, ok = verified.0, "console: chain verified");
    audit_page(cx, Some(verified)).await
}

/// `GET /console/audit/export?format=jsonl|ocsf&<filter>`.
pub(crate) async fn export(cx: &Ctx<'_>) -> Response<Body> {
    let (filter, _, _) = match filter_of(cx) {
        Ok(x) => x,
        Err(e) => return cx.refused(&WorkflowError::invalid("bad_filter", e)),
    };
    let ocsf = match cx.req.q("format").as_deref() {
        None | Some("jsonl") => false,
        Some("ocsf") => true,
        Some(_) => {
            return cx.refused(&WorkflowError::invalid(
                "bad_format",
                "`format` is jsonl or ocsf",
            ));
        }
    };
    let chain = match chain(cx, cx.req.q("customer")).await {
        Ok(c) => c,
        Err(e) => return cx.refused(&e),
    };
    let Some(_place) = cx.console.heavy.take() else {
        return super::Heavy::busy();
    };
    let dir = segment::chain_dir(&audit_dir(cx), &chain);
    let version = cx.console.version.clone();
    let read = tokio::task::spawn_blocking(move || read(&dir, &filter, MAX_EXPORT)).await;
    let (lines, more) = match read {
        Ok(Ok(x)) => x,
        _ => {
            return cx.refused(&WorkflowError::Trail(sallyport_audit::AuditError::Record(
                "the audit trail could not be read".into(),
            )));
        }
    };
    if more {
        return cx.refused(&WorkflowError::invalid(
            "too_many",
            format!(
                "over {MAX_EXPORT} records match: narrow the period, or export with `sallyport audit export`"
            ),
        ));
    }
    let mut out = Vec::new();
    for l in &lines {
        if ocsf {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                out.extend_from_slice(
                    sallyport_audit::ocsf::to_ocsf(&v, &version)
                        .to_string()
                        .as_bytes(),
                );
            }
        } else {
            out.extend_from_slice(l.as_bytes());
        }
        out.push(b'\n');
    }
    tracing::info!(peer = %cx.session.peer.id, chain = %chain, records = lines.len(), "console: audit export");
    let name = format!("{chain}-audit{}.jsonl", if ocsf { "-ocsf" } else { "" });
    download("application/x-ndjson", &name, out)
}

/// `GET /console/requests/{id}/bundle`: the request's evidence bundle.
pub(crate) async fn bundle(cx: &Ctx<'_>, id: &str) -> Response<Body> {
    if cx.session.peer.id.role() == Role::Technician {
        return cx.refused(&WorkflowError::Forbidden(
            "evidence bundles are for the customer's auditors and approvers, and provider admins"
                .into(),
        ));
    }
    let rid = match parse_id("request", id) {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    // Only a request the person may see.
    if let Err(e) = cx
        .console
        .workflow
        .requests
        .visible(cx.caller(), &rid)
        .await
    {
        return cx.refused(&e);
    }
    let Some(_place) = cx.console.heavy.take() else {
        return super::Heavy::busy();
    };
    let store = cx.console.workflow.requests.context().db.store().clone();
    let clock = cx.console.workflow.requests.context().clock.clone();
    let audit = audit_dir(cx);
    let rid_text = rid.to_string();
    let made = tokio::task::spawn_blocking(move || {
        sallyport_workflow::evidence::assemble(store.as_ref(), &audit, &rid_text, &clock)
    })
    .await;
    match made {
        Ok(Ok(b)) => match serde_json::to_vec_pretty(&b) {
            Ok(json) => {
                tracing::info!(peer = %cx.session.peer.id, request = %rid, "console: evidence bundle");
                download("application/json", &format!("evidence-{rid}.json"), json)
            }
            Err(_) => cx.refused(&WorkflowError::AuditUnavailable),
        },
        Ok(Err(e)) => cx.refused(&e),
        Err(_) => cx.refused(&WorkflowError::AuditUnavailable),
    }
}

/// One grant in the access register.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegisterRow {
    /// The grant.
    pub grant_id: String,
    /// Customer.
    pub customer: String,
    /// Target.
    pub target: String,
    /// The technician (SPIFFE id).
    pub technician: String,
    /// The request it came from, or empty (break-glass).
    pub request_id: String,
    /// Why it was asked for.
    pub reason: String,
    /// Its ticket.
    pub ticket: String,
    /// Who approved it (short names, `; `-separated).
    pub approved_by: String,
    /// The IdP that signed each approval (`; `-separated), or `not signed`.
    pub approval_idp: String,
    /// Window start.
    pub not_before: String,
    /// Window end.
    pub expires_at: String,
    /// Revoked: when, by whom, why; or empty.
    pub revoked: String,
    /// First used, or empty.
    pub first_used: String,
    /// Sessions opened.
    pub sessions: usize,
    /// Time connected in all, seconds.
    pub seconds_used: i64,
    /// Bytes up.
    pub bytes_up: u64,
    /// Bytes down.
    pub bytes_down: u64,
    /// Break-glass: who minted it and why, or empty.
    pub break_glass: String,
}

impl RegisterRow {
    /// The technician, for people (`provider/name`; the CSV has the SPIFFE id).
    pub fn who(&self) -> String {
        sallyport_ids::short(&self.technician)
    }

    /// Time connected, for people.
    pub fn used(&self) -> String {
        duration(self.seconds_used)
    }

    /// Bytes, for people.
    pub fn moved(&self) -> String {
        format!(
            "{} up, {} down",
            bytes(self.bytes_up),
            bytes(self.bytes_down)
        )
    }
}

/// The access register.
#[derive(Template)]
#[template(path = "console/register.html")]
pub struct RegisterPage {
    /// The frame.
    pub chrome: Chrome,
    /// The period: from (date).
    pub from: String,
    /// To (date, inclusive).
    pub to: String,
    /// The chain (customer) it is of.
    pub customer: String,
    /// Whether the person may choose the customer (admins).
    pub choose: bool,
    /// Grants.
    pub rows: Vec<RegisterRow>,
    /// Printable view: no navigation.
    pub print: bool,
    /// The query (for the CSV and print links).
    pub query: String,
    /// A problem with the period, or empty.
    pub error: String,
}

/// `GET /console/register?from=&to=&customer=[&format=csv|print]`.
pub(crate) async fn register(cx: &Ctx<'_>) -> Response<Body> {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let from = cx
        .req
        .q("from")
        .unwrap_or_else(|| today.saturating_sub(jiff::Span::new().days(30)).to_string());
    let to = cx.req.q("to").unwrap_or_else(|| today.to_string());
    let choose = cx.session.peer.id.role() == Role::Admin;
    let print = cx.req.q("format").as_deref() == Some("print");
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("from", &from)
        .append_pair("to", &to)
        .extend_pairs(cx.req.q("customer").map(|c| ("customer", c)))
        .finish();
    let mut page = RegisterPage {
        chrome: cx.chrome("Access register", "/console/register"),
        from: from.clone(),
        to: to.clone(),
        customer: String::new(),
        choose,
        rows: Vec::new(),
        print,
        query,
        error: String::new(),
    };
    let period = period(&from, &to);
    let Ok((since, until)) = period else {
        page.error = period.err().unwrap_or_default();
        return render(StatusCode::BAD_REQUEST, &page, None);
    };
    if choose && cx.req.q("customer").is_none() {
        return render(StatusCode::OK, &page, None);
    }
    let customer = match chain(cx, cx.req.q("customer")).await {
        Ok(c) => c,
        Err(e) => return cx.refused(&e),
    };
    let Register { rows, complete } = match rows(cx, &customer, since, until).await {
        Ok(r) => r,
        Err(e) => return cx.refused(&e),
    };
    if !complete {
        page.error = format!(
            "This register may be incomplete: more than {} grants, requests or sessions of {customer} are on record. Use the evidence API (`GET /v1/grants`, `sallyport audit export`) for the whole history.",
            sallyport_store::LIST_LIMIT
        );
    }
    tracing::info!(peer = %cx.session.peer.id, customer = %customer, grants = rows.len(), "console: access register");
    if cx.req.q("format").as_deref() == Some("csv") {
        if !complete {
            return cx.refused(&WorkflowError::Conflict(page.error));
        }
        return match csv_of(&rows) {
            Ok(csv) => download(
                "text/csv; charset=utf-8",
                &format!("{customer}-access-register-{from}-{to}.csv"),
                csv,
            ),
            Err(_) => cx.refused(&WorkflowError::AuditUnavailable),
        };
    }
    page.customer = customer;
    page.rows = rows;
    render(StatusCode::OK, &page, None)
}

/// The period `[from, to]` (dates, UTC; `to` inclusive) as Unix seconds `[since, until)`.
pub fn period(from: &str, to: &str) -> Result<(i64, i64), String> {
    let date = |k: &str, v: &str| {
        v.parse::<jiff::civil::Date>()
            .map_err(|_| format!("`{k}` must be a date like 2026-01-31, not `{v}`"))
    };
    let (f, t) = (date("from", from)?, date("to", to)?);
    if t < f {
        return Err("`to` is before `from`".into());
    }
    let days = (t - f).get_days();
    if i64::from(days) > MAX_PERIOD_DAYS {
        return Err(format!("the period is at most {MAX_PERIOD_DAYS} days"));
    }
    let unix = |d: jiff::civil::Date| {
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second())
            .map_err(|e| e.to_string())
    };
    Ok((unix(f)?, unix(t)? + 86_400))
}

/// The register's grants of `customer` whose window overlaps `[since, until)`.
async fn rows(
    cx: &Ctx<'_>,
    customer: &str,
    since: i64,
    until: i64,
) -> Result<Register, WorkflowError> {
    let wf = &cx.console.workflow;
    let grants = wf
        .grants
        .list(cx.caller(), Some(customer.to_owned()), false)
        .await?;
    let requests = wf
        .requests
        .list(cx.caller(), None, Some(customer.to_owned()))
        .await?;
    let sessions = wf
        .sessions
        .list(
            cx.caller(),
            Asked {
                customer: Some(customer.to_owned()),
                ..Asked::default()
            },
        )
        .await?;
    // Who signed each approval, from the trail (the store does not keep IdP evidence): the
    // approvals of the period, and of requests filed up to a month before it.
    let dir = segment::chain_dir(&audit_dir(cx), customer);
    let filter = Filter {
        since: jiff::Timestamp::from_second(since - 31 * 86_400).ok(),
        until: jiff::Timestamp::from_second(until).ok(),
        ..Filter::default()
    };
    let read = tokio::task::spawn_blocking(move || read(&dir, &filter, MAX_EXPORT))
        .await
        .ok()
        .and_then(Result::ok);
    // Where the trail could not be read in full, an approval not found is "unknown", never
    // "not signed".
    let trail_complete = read.as_ref().is_some_and(|(_, more)| !more);
    let signed: HashMap<(String, String), String> = read
        .map(|(lines, _)| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["event"] == "approval_recorded" || v["event"] == "request_approved")
                .filter_map(|v| {
                    Some((
                        (
                            v["request_id"].as_str()?.to_owned(),
                            v["actor"].as_str()?.to_owned(),
                        ),
                        v["idp"]["issuer"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let now = now_unix();
    let by_request: HashMap<String, &sallyport_store::RequestRecord> = requests
        .iter()
        .map(|r| (r.filed.id.to_string(), r))
        .collect();
    let mut out: Vec<RegisterRow> = grants
        .iter()
        .filter(|g| {
            // In force at some time of the period: from its start to its end or revocation.
            let end = g
                .revoked
                .as_ref()
                .map_or(g.expires_at, |r| r.at.min(g.expires_at));
            g.not_before < until && end > since
        })
        .map(|g| {
            let req = g
                .request_id
                .as_ref()
                .and_then(|r| by_request.get(r.as_str()).copied());
            let mine: Vec<&sallyport_store::SessionRecord> = sessions
                .iter()
                .map(|l| &l.session)
                .filter(|s| s.grant_id == g.id)
                .collect();
            let rid = g
                .request_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let approvals = req.map(|r| r.approvals.as_slice()).unwrap_or_default();
            RegisterRow {
                grant_id: g.id.to_string(),
                customer: g.customer.to_string(),
                target: g.target.to_string(),
                technician: g.technician.to_string(),
                request_id: rid.clone(),
                reason: req.map(|r| r.filed.reason.clone()).unwrap_or_default(),
                ticket: req.and_then(|r| r.filed.ticket.clone()).unwrap_or_default(),
                approved_by: approvals
                    .iter()
                    .map(|a| a.approver.short())
                    .collect::<Vec<_>>()
                    .join("; "),
                approval_idp: approvals
                    .iter()
                    .map(|a| {
                        signed
                            .get(&(rid.clone(), a.approver.to_string()))
                            .cloned()
                            .unwrap_or_else(|| {
                                if trail_complete {
                                    "not signed".into()
                                } else {
                                    "unknown (trail not read in full)".into()
                                }
                            })
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                not_before: when(g.not_before),
                expires_at: when(g.expires_at),
                revoked: g
                    .revoked
                    .as_ref()
                    .map(|r| format!("{} by {}: {}", when(r.at), r.by.short(), r.reason))
                    .unwrap_or_default(),
                first_used: mine
                    .iter()
                    .map(|s| s.opened_at)
                    .min()
                    .map(when)
                    .unwrap_or_default(),
                sessions: mine.len(),
                seconds_used: mine
                    .iter()
                    .map(|s| (s.closed_at.unwrap_or(now) - s.opened_at).max(0))
                    .sum(),
                bytes_up: mine.iter().map(|s| s.bytes_up).sum(),
                bytes_down: mine.iter().map(|s| s.bytes_down).sum(),
                break_glass: g
                    .break_glass
                    .as_ref()
                    .map(|b| format!("{}: {}", b.by, b.reason))
                    .unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.not_before.cmp(&b.not_before));
    // The store answers at most its newest 1000 of each: say so rather than leave gaps unseen.
    let cap = sallyport_store::LIST_LIMIT;
    let complete = grants.len() < cap && requests.len() < cap && sessions.len() < cap;
    Ok(Register {
        rows: out,
        complete: complete && trail_complete,
    })
}

/// The register's grants, and whether every source was read in full.
struct Register {
    rows: Vec<RegisterRow>,
    complete: bool,
}

/// A cell as a spreadsheet will not run it: a leading `= + - @` (or tab, CR) is quoted away.
pub fn cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// The register as CSV (a header row, then a row per grant).
pub fn csv_of(rows: &[RegisterRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "grant_id",
        "customer",
        "target",
        "technician",
        "request_id",
        "reason",
        "ticket",
        "approved_by",
        "approval_idp",
        "not_before",
        "expires_at",
        "revoked",
        "first_used",
        "sessions",
        "seconds_used",
        "bytes_up",
        "bytes_down",
        "break_glass",
    ])?;
    for r in rows {
        w.write_record([
            cell(&r.grant_id),
            cell(&r.customer),
            cell(&r.target),
            cell(&r.technician),
            cell(&r.request_id),
            cell(&r.reason),
            cell(&r.ticket),
            cell(&r.approved_by),
            cell(&r.approval_idp),
            r.not_before.clone(),
            r.expires_at.clone(),
            cell(&r.revoked),
            r.first_used.clone(),
            r.sessions.to_string(),
            r.seconds_used.to_string(),
            r.bytes_up.to_string(),
            r.bytes_down.to_string(),
            cell(&r.break_glass),
        ])?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_dates_in_order_and_bounded() {
        let (s, u) = period("2026-01-01", "2026-01-31").unwrap();
        assert_eq!(u - s, 31 * 86_400);
        assert!(
            period("2026-02-01", "2026-01-01")
                .unwrap_err()
                .contains("before")
        );
        assert!(
            period("yesterday", "2026-01-01")
                .unwrap_err()
                .contains("`from`")
        );
        assert!(
            period("2020-01-01", "2026-01-01")
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn csv_cells_cannot_become_formulas() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("patching"), "patching");
        let row = RegisterRow {
            grant_id: "g1".into(),
            customer: "acme".into(),
            target: "db01".into(),
            technician: "spiffe://sallyport.local/technician/northwind/alice".into(),
            request_id: "r1".into(),
            reason: "fix, \"now\"".into(),
            ticket: "+1".into(),
            approved_by: "acme/bob".into(),
            approval_idp: "https://idp.acme.example".into(),
            not_before: "a".into(),
            expires_at: "b".into(),
            revoked: String::new(),
            first_used: String::new(),
            sessions: 1,
            seconds_used: 60,
            bytes_up: 10,
            bytes_down: 20,
            break_glass: String::new(),
        };
        let text = String::from_utf8(csv_of(&[row]).unwrap()).unwrap();
        assert!(text.starts_with("grant_id,customer,"), "{text}");
        assert!(text.contains("\"fix, \"\"now\"\"\""), "{text}");
        assert!(text.contains(",'+1,"), "{text}");
    }
}
