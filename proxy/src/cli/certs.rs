//! `sallyport certs issue`: identity folders (certificate, key, CA, broker address) for
//! technicians, a customer's approvers and auditors, and provider admins, from the broker's CA. Each
//! certificate is registered in the broker's store; with `--replace`, the earlier certificates of the
//! same identity are locked (the rule is the workflow's). Whatever root creates in the state
//! directory is handed back to its owner, the service user.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use sallyport_audit::AuditLog;
use sallyport_config::Config;
use sallyport_ids::time::now_unix;
use sallyport_ids::{GroupName, Principal, SpiffeId};
use sallyport_store::IssuedCertificate;

use super::Failure;

/// `sallyport certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Issue an identity folder (cert.pem, key.pem, ca.pem, broker).
    Issue {
        #[command(subcommand)]
        role: IssueRole,
    },
}

/// Flags every `certs issue` takes.
#[derive(Debug, clap::Args)]
pub struct IssueCommon {
    /// The broker folder (holding sallyport.toml and the CA).
    #[arg(long)]
    dir: PathBuf,
    /// Identity folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Certificate lifetime in hours.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=8760))]
    hours: u64,
    /// Lock the certificates issued earlier for the same identity (those still valid), so that
    /// only the new one works: for a lost laptop or a leaked key. The locks are recorded on the
    /// trail; a running broker applies them within seconds and closes their tunnels.
    #[arg(long)]
    replace: bool,
}

/// Whom to issue for.
#[derive(Debug, Subcommand)]
pub enum IssueRole {
    /// Provider staff who request access.
    Technician {
        /// Name, e.g. alice.
        name: String,
        /// The provider (MSP) the technician works for.
        #[arg(long)]
        provider: String,
        /// Group carried in the certificate (repeatable), visible to customer policies.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A customer's approver.
    Approver {
        /// Name.
        name: String,
        /// Customer id.
        #[arg(long)]
        customer: String,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A customer's auditor.
    Auditor {
        /// Name.
        name: String,
        /// Customer id.
        #[arg(long)]
        customer: String,
        #[command(flatten)]
        common: IssueCommon,
    },
    /// A provider administrator.
    Admin {
        /// Name.
        name: String,
        #[command(flatten)]
        common: IssueCommon,
    },
}

/// `sallyport certs issue ROLE NAME ...`: an identity folder for one person.
pub fn issue(role: IssueRole) -> Result<(), Failure> {
    let (principal, groups, common) = match role {
        IssueRole::Technician {
            name,
            provider,
            groups,
            common,
        } => (
            Principal::Technician {
                provider: provider.parse().map_err(anyhow::Error::from)?,
                name: name.parse().map_err(anyhow::Error::from)?,
            },
            groups
                .iter()
                .map(|g| g.parse())
                .collect::<Result<Vec<GroupName>, _>>()
                .map_err(anyhow::Error::from)?,
            common,
        ),
        IssueRole::Approver {
            name,
            customer,
            common,
        } => (
            Principal::Approver {
                customer: customer.parse().map_err(anyhow::Error::from)?,
                name: name.parse().map_err(anyhow::Error::from)?,
            },
            vec![],
            common,
        ),
        IssueRole::Auditor {
            name,
            customer,
            common,
        } => (
            Principal::Auditor {
                customer: customer.parse().map_err(anyhow::Error::from)?,
                name: name.parse().map_err(anyhow::Error::from)?,
            },
            vec![],
            common,
        ),
        IssueRole::Admin { name, common } => (
            Principal::Admin {
                name: name.parse().map_err(anyhow::Error::from)?,
            },
            vec![],
            common,
        ),
    };
    let cfg = Config::load(&common.dir.join("sallyport.toml"))?;
    if let Some(c) = principal.customer()
        && cfg.customer(c.as_str()).is_none()
    {
        return Err(Failure::Other(anyhow!(
            "customer `{c}` is not configured in {}",
            cfg.file.display()
        )));
    }
    // A customer with its own IdP takes its approvers and auditors only from a sign-in there: the
    // provider's CA does not make them (the API would refuse such a certificate anyway).
    if let Principal::Approver { customer, .. } | Principal::Auditor { customer, .. } = &principal
        && let Some(signin) = cfg
            .customer(customer.as_str())
            .and_then(|c| c.oidc.as_ref())
    {
        return Err(Failure::Other(anyhow!(
            "customer `{customer}` has its own identity provider ({}): its {}s sign in there with `sallyport login --customer {customer} --broker SIGN_IN_ADDRESS --out DIR`; the provider's CA does not issue them",
            signin.oidc.issuer,
            principal.role().as_str()
        )));
    }
    let ca = crate::init::load_ca(&cfg)?;
    let id = SpiffeId::new(cfg.trust_domain.clone(), principal);
    let written = crate::init::issue_identity(
        &ca,
        &id,
        &groups,
        common.hours,
        &common.out,
        &cfg.public_address,
    )?;
    // Registered where the broker keeps its state, so a lock by serial and fingerprint names the
    // holder and a later --replace finds this certificate. Issuing away from the broker's data
    // folder still works; --replace then has nothing to lock there, so it is an error.
    let registered = crate::init::register(&cfg, &written);
    // Run as root next to a broker running as its service user: the store stays the broker's.
    crate::init::hand_back(&cfg.data_dir)?;
    let serial = match &registered {
        Ok(issued) => issued.serial.to_string(),
        Err(e) => {
            if common.replace {
                return Err(Failure::Other(anyhow!(
                    "{e:#}; --replace needs the broker's data folder ({})",
                    cfg.data_dir.display()
                )));
            }
            eprintln!(
                "sallyport: warning: the certificate is not registered ({e:#}); lock it with `sallyport lock --cert {}` if needed",
                common.out.join("cert.pem").display()
            );
            "unregistered".to_owned()
        }
    };
    println!(
        "wrote identity {} for {id} (valid {} h, broker {}; certificate {serial})",
        common.out.display(),
        common.hours,
        cfg.public_address,
    );
    if let (true, Ok(issued)) = (common.replace, &registered) {
        replace(&cfg, issued)?;
        crate::init::hand_back(&cfg.data_dir)?;
    }
    Ok(())
}

/// `--replace`: locks the other valid certificates of `issued`'s holder, each on the trail.
fn replace(cfg: &Config, issued: &IssuedCertificate) -> Result<(), Failure> {
    let store = crate::assembly::open_store(cfg)?;
    let customers: Vec<_> = cfg.customers.iter().map(|c| c.id.clone()).collect();
    let chains: Vec<&str> = customers.iter().map(|c| c.as_str()).collect();
    let (log, writer) = AuditLog::open(
        &cfg.data_dir.join("audit"),
        &chains,
        Some(crate::assembly::checkpoints(cfg)?),
    )
    .context("opening the audit trail")?;
    let actor = format!("certs-issue:{}", super::operator());
    let done = sallyport_workflow::locks::offline::replace_earlier(
        store.as_ref(),
        &log,
        &customers,
        issued,
        &actor,
        now_unix(),
    );
    drop(log);
    writer.join();
    let done = done.context("locking the earlier certificates")?;
    if done.locked.is_empty() {
        println!("no earlier valid certificate of {} to lock", issued.holder);
    }
    for rec in &done.locked {
        if let sallyport_store::LockTarget::Certificate { serial, .. } = &rec.lock.target {
            println!(
                "locked earlier certificate {serial} of {} (lock {})",
                issued.holder, rec.lock.id
            );
        }
    }
    Ok(())
}
