//! `GET /v1/audit?customer=&since=&until=&event=&technician=&target=&outcome=&after_seq=&limit=`: a customer's records
//! for that customer's auditors and approvers; provider admins may read any customer's chain (and
//! `_broker`). Records come back as written, oldest first, at most `limit` (default 1000, at most
//! 10000) per call; page on with `after_seq`. Asking for another customer's chain, or for any as a
//! technician, is refused and recorded (`access_refused`, the workflow's `Refusals`).

use hyper::{Response, StatusCode};
use sallyport_audit::query::{Filter, parse_time, read};
use sallyport_gateway::{Body, Conn};
use serde::Deserialize;

use crate::input::query;
use crate::{Api, ApiError, caller, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    customer: Option<String>,
    since: Option<String>,
    until: Option<String>,
    event: Option<String>,
    technician: Option<String>,
    after_seq: Option<u64>,
    target: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/audit`.
pub async fn list(api: &Api, conn: &Conn, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q: AuditQuery = query(q)?;
    let customer = api
        .workflow
        .refusals
        .chain_to_read(caller(conn), q.customer)
        .await?;
    let config = api.config.load();
    if customer != sallyport_audit::BROKER_CHAIN && config.customer(&customer).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no customer `{customer}`"),
        ));
    }
    let time = |name: &str, v: Option<String>| {
        v.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| ApiError::bad(format!("bad_{name}"), e.to_string()))
    };
    let since = time("since", q.since)?;
    let until = time("until", q.until)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad("bad_limit", "`limit` must be 1 to 10000"));
    }
    let filter = Filter {
        since,
        until,
        event: q.event,
        technician: q.technician,
        after_seq: q.after_seq,
        target: q.target,
        outcome: q.outcome,
    };
    let path = sallyport_audit::segment::chain_dir(&config.data_dir.join("audit"), &customer);
    let unreadable = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "reading the audit trail failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit trail could not be read",
        )
    };
    let (lines, more) = tokio::task::spawn_blocking(move || read(&path, &filter, limit))
        .await
        .map_err(|e| unreadable(&e))?
        .map_err(|e| unreadable(&e))?;
    let records: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let next = records.last().and_then(|r| r["seq"].as_u64());
    Ok(ok(
        StatusCode::OK,
        serde_json::json!({
            "customer": customer,
            "records": records,
            "more": more,
            "next_after_seq": if more { next } else { None },
        }),
    ))
}
