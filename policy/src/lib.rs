//! Sallyport authorization: each customer's Cedar policies, the Sallyport schema they are checked
//! against, and the decisions they make.
//!
//! This crate is pure: no I/O, no async. The caller reads a customer's policy file and hands its name and
//! text to [`CustomerPolicy::parse`], which validates it (strict mode) against [`SCHEMA`]. Decisions come
//! from [`CustomerPolicy::decide`], which always answers: default deny, any forbid wins, and a policy that
//! fails to evaluate denies the request and is reported in [`Decision::errors`].
//!
//! Tenants are walled off: a customer's policies are only ever evaluated against that customer's own
//! targets and approvers, whatever the policies say.
//!
//! ```
//! use sallyport_policy::{Action, CustomerPolicy, RequestContext, Subject, TargetInfo, DEMO_POLICY};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let acme = CustomerPolicy::parse("acme".parse()?, "Europe/Berlin", "policies/acme.cedar", DEMO_POLICY)?;
//! let alice = Subject::Technician {
//!     id: "spiffe://sallyport.local/technician/northwind/alice".parse()?,
//!     provider: "northwind".parse()?,
//!     name: "alice".parse()?,
//!     groups: vec!["support".parse()?],
//! };
//! let web = TargetInfo {
//!     customer: "acme".parse()?,
//!     id: "web".parse()?,
//!     tags: vec!["demo".to_owned()],
//!     port: 7070,
//!     protocol: "http".to_owned(),
//! };
//! let ctx = RequestContext {
//!     now: "2025-01-18T03:00:00Z".parse()?,
//!     minutes: 60,
//!     source_ip: "192.0.2.7".parse()?,
//!     ticket: None,
//!     mfa: false,
//! };
//! let decision = acme.decide(Action::Connect, &alice, &web, &ctx);
//! assert!(decision.allowed);
//! assert_eq!(decision.policy_ids, ["support-any-time"]);
//! assert_eq!(acme.annotation("support-any-time", "approvals"), Some("1"));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod customer;
mod entities;
mod error;
mod request;
mod scan;
mod schema;
mod slice;

pub use customer::CustomerPolicy;
pub use error::{Location, PolicyError, Problem};
pub use request::{Action, Decision, RequestContext, Subject, TargetInfo};
pub use schema::cedar_schema;

/// The Sallyport Cedar schema (namespace `Sallyport`), in Cedar's human-readable schema format.
pub const SCHEMA: &str = include_str!("sallyport.cedarschema");

/// The demo policy for customer `acme`, with comments showing how to write common rules.
pub const DEMO_POLICY: &str = include_str!("demo.cedar");
