//! `sallyport audit`: verify a trail or an evidence bundle offline, write the evidence bundle of a
//! request, extract a recorded session after checking it against the trail, and export a customer's
//! records as stored or as OCSF (ending quietly when the reader goes away, as in `| head`). The
//! checks themselves are the audit crate's; the bundle is gathered by the workflow crate.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Subcommand, ValueEnum};
use sallyport_audit::{AuditError, bundle, capture, checkpoint, query, segment, signed, verify};
use sallyport_ids::time::Clock;
use sallyport_store::sqlite::SqliteStore;
use sallyport_workflow::WorkflowError;

use super::DEFAULT_DATA;

/// `sallyport audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every chain's hashes, order and links, and every signed checkpoint. Reports the first
    /// problem of each chain with its file, line, seq and kind (edited, deleted, reordered,
    /// inserted, truncated, rewritten, forged checkpoint, torn tail). Exit 0 only when all is intact.
    Verify {
        /// The broker's data directory (holding audit/), or the audit folder itself. Default: that
        /// of `serve` on its embedded defaults.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Verify an evidence bundle made by `audit bundle` instead, offline.
        #[arg(long, conflicts_with = "data")]
        bundle: Option<PathBuf>,
        /// Only this customer's chain.
        #[arg(long)]
        customer: Option<String>,
        /// The audit public key: base64url, or a file holding it (as served by GET /v1/audit/key).
        /// Default: audit-key.pub in the audit folder, which whoever controls the folder could swap.
        #[arg(long)]
        key: Option<String>,
        /// A file of signed checkpoint lines kept elsewhere (for example from the customer's SIEM,
        /// which receives them): each must verify and match the chain, which catches a chain cut back
        /// together with its checkpoint file.
        #[arg(long, value_name = "FILE")]
        expect_checkpoints: Option<PathBuf>,
        /// With --bundle and no --key: check the bundle with the key it carries. That only shows
        /// the bundle is consistent, not that the broker signed it (whoever made the bundle could
        /// have signed it with a key of their own); the output says so.
        #[arg(long, requires = "bundle", conflicts_with = "key")]
        trust_bundle_key: bool,
        /// CUSTOMER=JWKS_FILE (repeatable): check every approval and denial of that customer
        /// against the keys of its own identity provider, fetched by the auditor from the IdP's
        /// jwks_uri (not from the broker): each must carry the IdP's ID token, whose signature,
        /// issuer, audience, expiry and nonce (bound to the request, decision and comment) check.
        #[arg(long, value_name = "CUSTOMER=JWKS_FILE")]
        idp_keys: Vec<String>,
    },
    /// Write one evidence file for an access request: the request and its approvals, the grant, every
    /// session it opened (bytes and times), and the chain records and signed checkpoint that prove
    /// them. Check it anywhere with `sallyport audit verify --bundle FILE --key KEY`.
    Bundle {
        /// The request id, e.g. r-5c1e....
        #[arg(long)]
        request: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The broker's data directory (holding sallyport.db and audit/).
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
    },
    /// Extract a recorded session (targets with `record = true`) after checking the capture file
    /// against the SHA-256 its `tunnel_close` record holds. Writes one JSON object per frame:
    /// `{"t_us", "dir" ("up" technician -> target, "down"), "data" (base64)}`.
    Capture {
        /// The session id (`session_id` in the trail, `Sallyport-Session` on the tunnel's 200).
        session: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The broker's data directory (holding captures/ and audit/).
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
    },
    /// Write a customer's records to stdout, oldest first: as stored (JSON lines, still verifiable)
    /// or as OCSF events for a SIEM.
    Export {
        /// The broker's data directory (holding audit/), or the audit folder itself.
        #[arg(long, default_value = DEFAULT_DATA)]
        data: PathBuf,
        /// The customer (or `_broker`).
        #[arg(long)]
        customer: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only records at or after this time (RFC 3339, or a UTC date like 2026-01-31).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time.
        #[arg(long)]
        until: Option<String>,
        /// Only this event, e.g. tunnel_open.
        #[arg(long)]
        event: Option<String>,
        /// Only records about this technician (SPIFFE id, or provider/name).
        #[arg(long)]
        technician: Option<String>,
    },
}

/// How `audit export` writes records.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// The records exactly as stored, one per line.
    Jsonl,
    /// One OCSF event per line (see docs/ocsf.md).
    Ocsf,
}

/// Runs one audit command.
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            data,
            bundle,
            customer,
            key,
            expect_checkpoints,
            trust_bundle_key,
            idp_keys,
        } => {
            let idp_keys = read_idp_keys(&idp_keys)?;
            match (bundle, data) {
                (Some(file), _) => {
                    verify_bundle(&file, key.as_deref(), trust_bundle_key, &idp_keys)
                }
                (None, data) => audit_verify(
                    &data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA)),
                    customer.as_deref(),
                    key.as_deref(),
                    expect_checkpoints.as_deref(),
                    &idp_keys,
                ),
            }
        }
        AuditCommand::Bundle { request, out, data } => make_bundle(&data, &request, &out),
        AuditCommand::Capture { session, out, data } => extract_capture(&data, &session, &out),
        AuditCommand::Export {
            data,
            customer,
            format,
            since,
            until,
            event,
            technician,
        } => {
            let time = |flag: &str, v: Option<String>| {
                v.map(|t| query::parse_time(&t).map_err(|e| anyhow!("--{flag}: {e}")))
                    .transpose()
            };
            let filter = query::Filter {
                since: time("since", since)?,
                until: time("until", until)?,
                event,
                technician,
                ..query::Filter::default()
            };
            audit_export(&data, &customer, format, &filter)
        }
    }
}

fn audit_dir(data: &Path) -> PathBuf {
    if data.join("audit").is_dir() {
        data.join("audit")
    } else {
        data.to_owned()
    }
}

fn extract_capture(data: &Path, session: &str, out: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    let checked = capture::check(data, session)?;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("writing {}", out.display()))?,
    );
    for f in &checked.frames {
        let line = serde_json::json!({
            "t_us": f.micros,
            "dir": if f.up { "up" } else { "down" },
            "data": base64::engine::general_purpose::STANDARD.encode(&f.data),
        });
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    println!(
        "wrote {}: session {session} of {}/{} by {}, {} frame(s); the capture matches the SHA-256 in its tunnel_close record (seq {})",
        out.display(),
        checked.customer,
        checked.header["target"].as_str().unwrap_or("?"),
        checked.header["technician"].as_str().unwrap_or("?"),
        checked.frames.len(),
        checked.close_seq
    );
    Ok(())
}

fn make_bundle(data: &Path, request_id: &str, out: &Path) -> anyhow::Result<()> {
    let db = data.join("sallyport.db");
    if !db.exists() {
        return Err(anyhow!(
            "no store at {} (pass the broker's data directory with --data)",
            db.display()
        ));
    }
    let store = SqliteStore::open(&db)?;
    let b = sallyport_workflow::evidence::assemble(
        &store,
        &data.join("audit"),
        request_id,
        &Clock::system(),
    )
    .map_err(|e| match e {
        // Offline, the detail is the answer: there is no log to look in.
        WorkflowError::StoreUnavailable(detail) => anyhow!("store: {detail}"),
        WorkflowError::Trail(AuditError::Io { path, message }) => {
            anyhow!("reading {}: {message}", path.display())
        }
        other => anyhow!(other),
    })?;
    let covered = b.checkpoint.is_some();
    std::fs::write(out, serde_json::to_string_pretty(&b)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {}: request {request_id}, {} session(s), {} records ({} about it){}",
        out.display(),
        b.sessions.len(),
        b.records.len(),
        b.relevant.len(),
        if covered {
            ", with the signed checkpoint that covers them"
        } else {
            "; no signed checkpoint covers them yet (a running broker signs one about 2 s after activity ends): make it again in a moment"
        }
    );
    Ok(())
}

/// The `--idp-keys CUSTOMER=JWKS_FILE` given: each customer with its IdP's key set.
fn read_idp_keys(specs: &[String]) -> anyhow::Result<Vec<(String, signed::JwkSet)>> {
    specs
        .iter()
        .map(|spec| {
            let (customer, file) = spec.split_once('=').ok_or_else(|| {
                anyhow!("--idp-keys `{spec}`: give CUSTOMER=JWKS_FILE, e.g. acme=acme-jwks.json")
            })?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--idp-keys {customer}: reading {file}"))?;
            let keys = signed::jwks_from_json(&text).map_err(|e| {
                anyhow!("--idp-keys {customer}: {file} is not a JWK set (the JSON the IdP's jwks_uri serves): {e}")
            })?;
            Ok((customer.to_owned(), keys))
        })
        .collect()
}

/// Prints what checking one chain's signed decisions found; `false` when a decision did not check.
fn report_signed(name: &str, r: &signed::SignedReport) -> bool {
    match &r.problem {
        None => {
            println!(
                "{name}: every approval and denial signed by its identity provider: {} checked ({} refused attempts recorded)",
                r.checked, r.refusals
            );
            true
        }
        Some(p) => {
            println!("{name}: signed decision: {p}");
            false
        }
    }
}

fn verify_bundle(
    file: &Path,
    key: Option<&str>,
    trust_bundle_key: bool,
    idp_keys: &[(String, signed::JwkSet)],
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let b: bundle::Bundle = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not an evidence bundle: {e}", file.display()))?;
    let key = match key {
        Some(k) => checkpoint::read_public_key(k).map_err(|e| anyhow!("--key: {e}"))?,
        None if !trust_bundle_key => {
            return Err(anyhow!(
                "no key to check {} with: pass --key with the audit key from GET /v1/audit/key (or the customer's SIEM copy of it); --trust-bundle-key checks with the key inside the bundle, which proves nothing about who signed it",
                file.display()
            ));
        }
        None => checkpoint::read_public_key(&b.audit_key.to_string())
            .or_else(|_| {
                checkpoint::read_public_key(b.audit_key["public_key"].as_str().unwrap_or(""))
            })
            .map_err(|e| anyhow!("the bundle's key: {e}"))?,
    };
    let trusted = if trust_bundle_key {
        " with the key inside the bundle (--trust-bundle-key: consistent, but not proven to be the broker's)"
    } else {
        ""
    };
    let mut signed_ok = true;
    for (customer, keys) in idp_keys {
        if *customer != b.customer {
            return Err(anyhow!(
                "--idp-keys {customer}: the bundle is of customer `{}`",
                b.customer
            ));
        }
        let r = signed::check_records(
            b.records
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("{} record {}", file.display(), i + 1), l.as_str())),
            keys,
        );
        signed_ok &= report_signed(customer, &r);
    }
    if !signed_ok {
        return Err(anyhow!(
            "the bundle's decisions are not all signed by the customer's identity provider"
        ));
    }
    match bundle::verify(&b, &key) {
        Ok(p) => {
            println!(
                "{}: intact: request {}, {} records (seq {} to {}, {} about it), {} session(s), every field of the request, grant and sessions recomputed from them, checkpoint verified{trusted}",
                file.display(),
                b.request["id"].as_str().unwrap_or(""),
                p.records,
                p.seqs.0,
                p.seqs.1,
                p.relevant,
                p.sessions
            );
            Ok(())
        }
        Err(e) => {
            println!("{}: {e}", file.display());
            Err(anyhow!("the evidence bundle is not intact"))
        }
    }
}
fn audit_export(
    data: &Path,
    customer: &str,
    format: ExportFormat,
    filter: &query::Filter,
) -> anyhow::Result<()> {
    let dir = audit_dir(data);
    let path = segment::chain_dir(&dir, customer);
    if !path.is_dir() {
        return Err(anyhow!(
            "no chain for customer `{customer}` in {} (pass the broker's data directory with --data)",
            dir.display()
        ));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // When the reader goes away (`| head -1`), the export stops there, quietly and successfully.
    let mut reader_gone = false;
    let mut write = |text: &str| {
        let r = writeln!(out, "{text}");
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            reader_gone = true;
        }
        r
    };
    let n = query::each(&path, filter, |line| match format {
        ExportFormat::Jsonl => write(line),
        ExportFormat::Ocsf => {
            let v: serde_json::Value = serde_json::from_str(line)?;
            write(&sallyport_audit::ocsf::to_ocsf(&v, env!("CARGO_PKG_VERSION")).to_string())
        }
    });
    let flushed = if reader_gone { Ok(()) } else { out.flush() };
    match (n, flushed) {
        _ if reader_gone => return Ok(()),
        (_, Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        (Ok(n), Ok(())) => eprintln!("exported {n} record(s) of {customer}"),
        (Err(e), _) => {
            return Err(anyhow!(e)).with_context(|| format!("reading {}", path.display()));
        }
        (_, Err(e)) => return Err(anyhow!(e).context("writing to stdout")),
    }
    Ok(())
}
fn audit_verify(
    data: &Path,
    customer: Option<&str>,
    key: Option<&str>,
    expected: Option<&Path>,
    idp_keys: &[(String, signed::JwkSet)],
) -> anyhow::Result<()> {
    let dir = audit_dir(data);
    let key = match key {
        Some(k) => checkpoint::read_public_key(k).map_err(|e| anyhow!("--key: {e}"))?,
        None => {
            let local = dir.join(checkpoint::KEY_FILE);
            let k = checkpoint::read_public_key(&local.display().to_string()).map_err(|e| {
                anyhow!("no audit key to check the checkpoints with ({e}); pass --key with the key from GET /v1/audit/key")
            })?;
            eprintln!(
                "note: checking checkpoints with {} (key id {}), next to the trail; pass --key with the key from GET /v1/audit/key to rule out a swapped key",
                local.display(),
                sallyport_certs::grant::ed25519_kid(&k)
            );
            k
        }
    };
    let key = Some(key);
    let mut chains = segment::chains(&dir)
        .with_context(|| format!("reading the audit folder {}", dir.display()))?;
    // Checkpoints an auditor kept: each must verify, and its chain is checked against it (a chain
    // gone from the folder entirely is caught this way).
    let (mut records, mut checkpoints, mut bad) = (0, 0, 0);
    let mut kept: Vec<verify::Pin> = Vec::new();
    if let Some(file) = expected {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match checkpoint::check(line, key.as_deref()) {
                Err(e) => {
                    bad += 1;
                    println!("{}:{}: forged checkpoint: {e}", file.display(), i + 1);
                }
                Ok(cp) => {
                    if !chains.contains(&cp.chain) {
                        chains.push(cp.chain.clone());
                    }
                    kept.push(verify::Pin {
                        file: file.to_owned(),
                        line: i + 1,
                        cp,
                    });
                }
            }
        }
        chains.sort();
    }
    if let Some(c) = customer {
        chains.retain(|name| name == c);
        if chains.is_empty() {
            return Err(anyhow!("no chain for customer `{c}` in {}", dir.display()));
        }
    }
    if chains.is_empty() {
        return Err(anyhow!(
            "no audit chains in {} (pass the broker's data directory)",
            dir.display()
        ));
    }
    // A chain still in the flat layout of an earlier version is not read here: say so.
    for name in segment::flat_chains(&dir).unwrap_or_default() {
        if customer.is_none_or(|c| c == name) {
            bad += 1;
            println!(
                "{name}: not verified: {} holds it in the layout of an earlier version; start the broker once to move it into {}/",
                dir.display(),
                segment::chain_dir(&dir, &name).display()
            );
        }
    }
    for name in &chains {
        let extra: Vec<verify::Pin> = kept
            .iter()
            .filter(|p| p.cp.chain == *name)
            .cloned()
            .collect();
        let r = verify::verify(&dir, name, key.as_deref(), &extra);
        records += r.records;
        checkpoints += r.checkpoints;
        match &r.problem {
            None => println!(
                "{name}: intact: {} records, {} checkpoints, {} records after the last checkpoint",
                r.records, r.checkpoints, r.unsigned
            ),
            Some(p) => {
                bad += 1;
                println!("{name}: {p}");
            }
        }
    }
    for (customer, keys) in idp_keys {
        if !chains.contains(customer) {
            bad += 1;
            println!("{customer}: no chain to check its signed decisions on");
            continue;
        }
        match signed::check_chain(&dir, customer, keys) {
            Ok(r) => {
                if !report_signed(customer, &r) {
                    bad += 1;
                }
            }
            Err(e) => {
                bad += 1;
                println!("{customer}: signed decisions not checked: {e}");
            }
        }
    }
    let n = chains.len();
    if bad == 0 {
        println!("verified {n} chain(s), {records} records, {checkpoints} checkpoints: all intact");
        Ok(())
    } else {
        println!(
            "verified {n} chain(s), {records} records, {checkpoints} checkpoints: {bad} problem(s)"
        );
        Err(anyhow!("the audit trail is not intact"))
    }
}
