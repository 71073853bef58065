//! The hot path of a decision: the Cedar entities and context of one request, built straight from values.
//!
//! Cedar's public constructors evaluate every attribute as an expression (`Entity::new`), recompute the
//! transitive closure of the hierarchy with a general cycle-safe algorithm (`Entities::from_entities`),
//! and re-parse the function name `ip` with the full policy parser on every call
//! (`RestrictedExpression::new_ip`): together about 15 µs, more than the rest of a decision. Here
//!
//! - attribute values are built directly as `cedar_policy_core` values (nothing to evaluate);
//! - the entity store is declared transitively closed, which it is: the hierarchy is one level deep
//!   (technicians in groups; targets and approvers in their customer) and groups and customers have no
//!   parents;
//! - the `ip` name is parsed once, in [`crate::schema`];
//! - the context is a record of values: only `source_ip` goes through an evaluator (the `ip`
//!   extension function), not the whole record.
//!
//! `cedar-policy` pins `cedar-policy-core` to its own exact version, so the two always agree; the types
//! cross over through `cedar-policy`'s `From` and `AsRef` impls. Unit tests check that what is built here conforms to
//! the schema and matches what the public constructors build.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cedar_policy::{EntityId, EntityUid};
use cedar_policy_core::ast::{self, PartialValue, RestrictedExpr, Value};
use cedar_policy_core::entities::{NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use jiff::civil::Weekday;
use sallyport_ids::{GroupName, PersonName, ProviderId};

use crate::PolicyError;
use crate::request::{RequestContext, TargetInfo};
use crate::schema::Shared;

/// A core entity with string, long and set attributes and the given parents.
fn entity(
    uid: EntityUid,
    attrs: impl IntoIterator<Item = (&'static str, Value)>,
    parents: HashSet<ast::EntityUID>,
) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        uid.into(),
        attrs
            .into_iter()
            .map(|(k, v)| (k.into(), PartialValue::from(v))),
        HashSet::new(),
        parents,
        [],
    )
}

fn string(s: &str) -> Value {
    Value::from(s)
}

/// `Sallyport::Technician::"<provider>/<name>"` with `provider` and `name`, in one group per `groups`.
pub(crate) fn technician(
    shared: &Shared,
    provider: &ProviderId,
    name: &PersonName,
    groups: &[GroupName],
) -> ast::Entity {
    let id = format!("{provider}/{name}");
    let uid = EntityUid::from_type_name_and_id(shared.technician.clone(), EntityId::new(id));
    let parents = groups
        .iter()
        .map(|g| {
            EntityUid::from_type_name_and_id(shared.group.clone(), EntityId::new(g.as_str())).into()
        })
        .collect();
    entity(
        uid,
        [
            ("provider", string(provider.as_str())),
            ("name", string(name.as_str())),
        ],
        parents,
    )
}

/// `Sallyport::Approver::"<name>"` with `name`, in `customer`.
pub(crate) fn approver(shared: &Shared, name: &PersonName, customer: &EntityUid) -> ast::Entity {
    let uid =
        EntityUid::from_type_name_and_id(shared.approver.clone(), EntityId::new(name.as_str()));
    entity(
        uid,
        [("name", string(name.as_str()))],
        HashSet::from([customer.clone().into()]),
    )
}

/// `Sallyport::Target::"<id>"` with `tags`, `port` and `protocol`, in `customer`.
pub(crate) fn target(shared: &Shared, target: &TargetInfo, customer: &EntityUid) -> ast::Entity {
    let uid =
        EntityUid::from_type_name_and_id(shared.target.clone(), EntityId::new(target.id.as_str()));
    let tags = Value::set(target.tags.iter().map(|t| string(t)), None);
    entity(
        uid,
        [
            ("tags", tags),
            ("port", Value::from(i64::from(target.port))),
            ("protocol", string(&target.protocol)),
        ],
        HashSet::from([customer.clone().into()]),
    )
}

/// The entity store of one request. The entities' parents must have no parents themselves (see the
/// module docs), so the hierarchy given is already transitively closed.
pub(crate) fn store(
    entities: impl IntoIterator<Item = ast::Entity>,
) -> Result<cedar_policy_core::entities::Entities, PolicyError> {
    cedar_policy_core::entities::Entities::from_entities(
        entities,
        None::<&NoEntitiesSchema>,
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .map_err(|e| PolicyError::Internal(e.to_string()))
}

/// The request context: `hour` and `weekday` of `local` (the request time in the customer's zone),
/// `minutes`, `source_ip`, `ticket` and `mfa`, as a record of values. Only `source_ip` needs evaluating (the
/// `ip` extension function); the rest are literals.
pub(crate) fn context(
    shared: &Shared,
    local: jiff::civil::DateTime,
    ctx: &RequestContext,
) -> Result<ast::Context, PolicyError> {
    let source_ip = RestrictedEvaluator::new(Extensions::all_available())
        .interpret(ip_expr(shared, ctx.source_ip).as_borrowed())
        .map_err(|e| PolicyError::Internal(e.to_string()))?;
    Ok(ast::Context::Value(Arc::new(BTreeMap::from([
        ("hour".into(), Value::from(i64::from(local.hour()))),
        ("weekday".into(), string(weekday_name(local.weekday()))),
        ("minutes".into(), Value::from(i64::from(ctx.minutes))),
        ("source_ip".into(), source_ip),
        (
            "ticket".into(),
            string(ctx.ticket.as_deref().unwrap_or_default()),
        ),
        ("mfa".into(), Value::from(ctx.mfa)),
    ]))))
}

/// [`ip_expr`] as a public expression, to compare with `RestrictedExpression::new_ip`.
#[cfg(test)]
pub(crate) fn ip(shared: &Shared, addr: std::net::IpAddr) -> cedar_policy::RestrictedExpression {
    cedar_policy::RestrictedExpression::from(ip_expr(shared, addr))
}

/// `ip("<addr>")`, the same expression as `RestrictedExpression::new_ip` without re-parsing `ip`.
///
/// Cedar rejects IPv4-mapped IPv6 (`::ffff:10.0.0.1`, which is how a dual-stack listener reports IPv4
/// peers); policies see the IPv4 address instead.
fn ip_expr(shared: &Shared, addr: std::net::IpAddr) -> RestrictedExpr {
    RestrictedExpr::call_extension_fn(
        shared.ip_fn.clone(),
        [RestrictedExpr::val(addr.to_canonical().to_string())],
    )
}

/// The `context.weekday` value: `Mon` .. `Sun`.
fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "Mon",
        Weekday::Tuesday => "Tue",
        Weekday::Wednesday => "Wed",
        Weekday::Thursday => "Thu",
        Weekday::Friday => "Fri",
        Weekday::Saturday => "Sat",
        Weekday::Sunday => "Sun",
    }
}

#[cfg(test)]
mod tests;
