//! `GET /v1/audit?customer=&since=&until=&event=&technician=&after_seq=&limit=`: a customer's records
//! for that customer's auditors and approvers; provider admins may read any customer's chain (and
//! `_broker`). Records come back as written, oldest first, at most `limit` (default 1000, at most
//! 10000) per call; page on with `after_seq`.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use sallyport_ids::Principal;
use serde::Deserialize;

use super::{error, ok, query};
use crate::audit::query::{Filter, parse_time, read};
use crate::broker::{Body, Broker, Conn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    customer: Option<String>,
    since: Option<String>,
    until: Option<String>,
    event: Option<String>,
    technician: Option<String>,
    after_seq: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/audit`.
pub async fn list(b: &Arc<Broker>, conn: &Conn, q: Option<&str>) -> Response<Body> {
    let q: AuditQuery = match query(q) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let customer = match (conn.peer.id.principal(), q.customer) {
        (Principal::Approver { customer, .. } | Principal::Auditor { customer, .. }, asked) => {
            let mine = customer.to_string();
            if asked.as_ref().is_some_and(|a| *a != mine) {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!("you can only read the audit trail of customer `{mine}`"),
                );
            }
            mine
        }
        (Principal::Admin { .. }, Some(c)) => c,
        (Principal::Admin { .. }, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "name the chain to read: `customer=<id>` (or `_broker`)",
            );
        }
        (Principal::Technician { .. }, _) => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the audit trail is for the customer's auditors and approvers, and provider admins",
            );
        }
    };
    if customer != crate::audit::BROKER_CHAIN && b.cfg.customer(&customer).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no customer `{customer}`"),
        );
    }
    let time = |name: &str, v: Option<String>| match v.as_deref().map(parse_time) {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(e)) => Err(error(StatusCode::BAD_REQUEST, &format!("bad_{name}"), &e)),
    };
    let (since, until) = match (time("since", q.since), time("until", q.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(resp), _) | (_, Err(resp)) => return resp,
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_limit",
            "`limit` must be 1 to 10000",
        );
    }
    let filter = Filter {
        since,
        until,
        event: q.event,
        technician: q.technician,
        after_seq: q.after_seq,
    };
    let path = crate::audit::segment::chain_dir(&b.cfg.data_dir.join("audit"), &customer);
    let found = tokio::task::spawn_blocking(move || read(&path, &filter, limit)).await;
    let (lines, more) = match found {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading the audit trail failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail could not be read",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "audit reader failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail could not be read",
            );
        }
    };
    let records: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let next = records.last().and_then(|r| r["seq"].as_u64());
    ok(
        StatusCode::OK,
        serde_json::json!({
            "customer": customer,
            "records": records,
            "more": more,
            "next_after_seq": if more { next } else { None },
        }),
    )
}
