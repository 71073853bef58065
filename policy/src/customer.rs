//! [`CustomerPolicy`]: one customer's validated Cedar policy set, its time zone, and decisions on it.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{EntityId, EntityUid, PolicyId, PolicySet, ValidationMode};
use cedar_policy_core::ast::{self, EntityUIDEntry, Literal, ValueKind};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;
use sallyport_ids::{CustomerId, GroupName, Principal};

use crate::entities;
use crate::error::{Location, PolicyError, Problem};
use crate::request::{Action, Decision, RequestContext, Subject, TargetInfo};
use sha2::Digest as _;

use crate::scan::scan;
use crate::schema::{Shared, shared};
use crate::slice::Sliced;

/// One customer's policies, validated against the Sallyport schema. `Send + Sync`; share it behind an
/// `Arc` and replace it whole on reload.
#[derive(Debug, Clone)]
pub struct CustomerPolicy {
    customer: CustomerId,
    tz: jiff::tz::TimeZone,
    /// All policies, with their ids and annotations.
    set: PolicySet,
    /// The same policies, sliced by action and principal group for fast decisions.
    sliced: Sliced,
    /// Policy ids in file order.
    ids: Vec<String>,
    /// `Sallyport::Customer::"<customer>"`, the parent of the customer's targets and approvers.
    customer_uid: EntityUid,
    /// The customer entity, added to every decision's entity store.
    customer_entity: ast::Entity,
    /// SHA-256 (lowercase hex) of the policy file's text: what the trail names as the policy set
    /// in force, and what `sha256sum` of the file gives.
    digest: String,
    shared: &'static Shared,
}

impl CustomerPolicy {
    /// Parses and validates (strict mode) a customer's policy file against the Sallyport schema.
    ///
    /// `timezone` is the customer's IANA time zone (e.g. `Europe/Berlin`): policies see `context.hour`
    /// and `context.weekday` there. `file_name` only labels errors (`file:line:col: message`). A policy's
    /// id is its `@id("...")` annotation, or Cedar's default `policyN` (N counting from 0 in file order).
    /// An empty file is allowed and denies everything.
    pub fn parse(
        customer: CustomerId,
        timezone: &str,
        file_name: &str,
        source: &str,
    ) -> Result<Self, PolicyError> {
        let shared = shared()?;
        let tz = shared
            .tzdb
            .get(timezone)
            .map_err(|_| PolicyError::TimeZone {
                customer: customer.clone(),
                zone: timezone.to_owned(),
            })?;

        let parsed = PolicySet::from_str(source).map_err(|errs| {
            let mut problems: Vec<Problem> = errs
                .iter()
                .map(|e| Problem::from_diagnostic(file_name, source, e))
                .collect();
            sort_problems(&mut problems);
            PolicyError::Parse(problems)
        })?;

        let marks = scan(source);
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Template {
                at: Location::at(file_name, source, marks.first_slot.unwrap_or(0)),
            });
        }

        let (set, ids) = rename_policies(&parsed, &marks.id_annotations, file_name, source)?;

        let result = shared.validator.validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let mut problems: Vec<Problem> = result
                .validation_errors()
                .map(|e| Problem::from_diagnostic(file_name, source, e))
                .collect();
            sort_problems(&mut problems);
            return Err(PolicyError::Validation(problems));
        }

        let customer_uid = EntityUid::from_type_name_and_id(
            shared.customer.clone(),
            EntityId::new(customer.as_str()),
        );
        let customer_entity = ast::Entity::new_with_attr_partial_value(
            customer_uid.clone().into(),
            [],
            HashSet::new(),
            HashSet::new(),
            [],
        );
        let sliced = Sliced::new(&set, shared);
        let digest = hex::encode(sha2::Sha256::digest(source.as_bytes()));
        Ok(Self {
            customer,
            tz,
            set,
            sliced,
            ids,
            customer_uid,
            customer_entity,
            digest,
            shared,
        })
    }

    /// SHA-256 (lowercase hex) of the policy file's text, as `sha256sum` gives it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The customer these policies belong to.
    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    /// The customer's time zone.
    pub fn time_zone(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    /// The ids of all policies, in file order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.ids.clone()
    }

    /// Value of annotation `key` (e.g. `approvals`, `max_minutes`) on policy `policy_id`.
    pub fn annotation(&self, policy_id: &str, key: &str) -> Option<&str> {
        self.set.annotation(&PolicyId::new(policy_id), key)
    }

    /// Decides whether `subject` may do `action` on `target`. Always returns a decision: default deny,
    /// any forbid wins, and any policy evaluation error denies (the errors are listed in
    /// [`Decision::errors`]).
    ///
    /// Denies without evaluating any policy when the target or an approver belongs to another customer,
    /// when the subject's kind does not fit the action (only approvers approve), or when the subject does
    /// not match its SPIFFE id.
    pub fn decide(
        &self,
        action: Action,
        subject: &Subject,
        target: &TargetInfo,
        ctx: &RequestContext,
    ) -> Decision {
        if target.customer != self.customer {
            return Decision::deny("target belongs to another customer");
        }
        match (action, subject) {
            (Action::Approve, Subject::Technician { .. }) => {
                return Decision::deny("only approvers can approve");
            }
            (Action::Connect | Action::Request, Subject::Approver { .. }) => {
                return Decision::deny("only technicians can connect or request");
            }
            (Action::Approve, Subject::Approver { customer, .. }) if *customer != self.customer => {
                return Decision::deny("approver belongs to another customer");
            }
            _ => {}
        }
        if !subject_matches_id(subject) {
            return Decision::deny("subject does not match its spiffe id");
        }
        match self.authorize(action, subject, target, ctx) {
            Ok(decision) => decision,
            Err(error) => Decision {
                allowed: false,
                reason: "could not build the authorization request".to_owned(),
                policy_ids: Vec::new(),
                errors: vec![match error {
                    PolicyError::Internal(m) => m,
                    other => other.to_string(),
                }],
            },
        }
    }

    /// Builds the Cedar request and entities, and evaluates the policies that can apply to `action`.
    fn authorize(
        &self,
        action: Action,
        subject: &Subject,
        target: &TargetInfo,
        ctx: &RequestContext,
    ) -> Result<Decision, PolicyError> {
        let shared = self.shared;
        let principal = match subject {
            Subject::Technician {
                provider,
                name,
                groups,
                ..
            } => entities::technician(shared, provider, name, groups),
            Subject::Approver { name, .. } => entities::approver(shared, name, &self.customer_uid),
        };
        let resource = entities::target(shared, target, &self.customer_uid);
        let local = self.tz.to_datetime(ctx.now);
        let request = ast::Request::new_unchecked(
            EntityUIDEntry::known(principal.uid().clone(), None),
            EntityUIDEntry::known(shared.action(action).clone().into(), None),
            EntityUIDEntry::known(resource.uid().clone(), None),
            Some(entities::context(shared, local, ctx)?),
        );
        let store = entities::store([principal, resource, self.customer_entity.clone()])?;

        let groups: &[GroupName] = match subject {
            Subject::Technician { groups, .. } => groups,
            Subject::Approver { .. } => &[],
        };
        // Cedar's decision over the whole set, from the policies that can match (see `crate::slice`).
        let evaluator = Evaluator::new(request, &store, Extensions::all_available());
        let mut permits: Vec<String> = Vec::new();
        let mut forbids: Vec<String> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for policy in self.sliced.candidates(action, groups) {
            let satisfied = match evaluator.interpret(&policy.condition, &policy.env) {
                Ok(value) => match value.value {
                    ValueKind::Lit(Literal::Bool(b)) => b,
                    // Strict validation makes every condition boolean; fail closed all the same.
                    other => {
                        errors.push(format!(
                            "error while evaluating policy `{}`: the condition is not a boolean: {other:?}",
                            policy.id
                        ));
                        failed.push(policy.id.clone());
                        continue;
                    }
                },
                Err(e) => {
                    // The same words as Cedar's `PolicyEvaluationError`.
                    errors.push(format!(
                        "error while evaluating policy `{}`: {e}",
                        policy.id
                    ));
                    failed.push(policy.id.clone());
                    continue;
                }
            };
            if satisfied {
                match policy.effect {
                    ast::Effect::Permit => permits.push(policy.id.clone()),
                    ast::Effect::Forbid => forbids.push(policy.id.clone()),
                }
            }
        }

        // Fail closed: a policy that errors could have been the forbid that applies.
        if !errors.is_empty() {
            failed.sort_unstable();
            failed.dedup();
            let mut decision = Decision::by_policies(false, "denied: evaluation failed in", failed);
            decision.errors = errors;
            return Ok(decision);
        }
        if !forbids.is_empty() {
            forbids.sort_unstable();
            return Ok(Decision::by_policies(false, "forbidden by", forbids));
        }
        if !permits.is_empty() {
            permits.sort_unstable();
            return Ok(Decision::by_policies(true, "permitted by", permits));
        }
        Ok(Decision::deny("no policy permits this request"))
    }
}

/// A policy id as written (its `Display` escapes quotes and non-ASCII characters).
fn id_str(id: &PolicyId) -> &str {
    id.as_ref()
}

/// Whether the subject's fields name the same principal as its SPIFFE id.
fn subject_matches_id(subject: &Subject) -> bool {
    match subject {
        Subject::Technician {
            id, provider, name, ..
        } => matches!(
            id.principal(),
            Principal::Technician { provider: p, name: n } if p == provider && n == name
        ),
        Subject::Approver { id, customer, name } => matches!(
            id.principal(),
            Principal::Approver { customer: c, name: n } if c == customer && n == name
        ),
    }
}

/// Problems in file order.
fn sort_problems(problems: &mut [Problem]) {
    problems.sort_by_key(|p| (p.at.line, p.at.column));
}

/// Gives each policy its `@id` (if any) as its id. Returns the renamed set and the ids in file order.
///
/// Cedar does not expose where a policy starts, so errors point at the policy's `@id` annotation, found by
/// [`scan`]: the k-th policy (in file order) that has an `id` annotation owns the k-th `@id` in the text.
fn rename_policies(
    parsed: &PolicySet,
    id_marks: &[usize],
    file_name: &str,
    source: &str,
) -> Result<(PolicySet, Vec<String>), PolicyError> {
    // `PolicySet::from_str` names policies `policy0`, `policy1`, ... in file order.
    let mut policies: Vec<(usize, &cedar_policy::Policy)> = parsed
        .policies()
        .map(|p| {
            let n = id_str(p.id())
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    policies.sort_by_key(|(n, _)| *n);

    let mut annotated = 0;
    // Each id seen so far, with the offset of its `@id` annotation (`None` for a default id).
    let mut seen: HashMap<String, Option<usize>> = HashMap::new();
    let mut set = PolicySet::new();
    let mut ids = Vec::with_capacity(policies.len());
    for (_, policy) in policies {
        let (id, offset) = match policy.annotation("id") {
            Some(id) => {
                let offset = id_marks.get(annotated).copied().unwrap_or(0);
                annotated += 1;
                if id.is_empty() {
                    return Err(PolicyError::EmptyId {
                        at: Location::at(file_name, source, offset),
                    });
                }
                (id.to_owned(), Some(offset))
            }
            None => (id_str(policy.id()).to_owned(), None),
        };
        let duplicate = |first: Option<usize>| PolicyError::DuplicateId {
            at: Location::at(file_name, source, offset.or(first).unwrap_or(0)),
            id: id.clone(),
        };
        if let Some(first) = seen.get(&id) {
            return Err(duplicate(*first));
        }
        set.add(policy.new_id(PolicyId::new(&id)))
            .map_err(|_| duplicate(None))?;
        seen.insert(id.clone(), offset);
        ids.push(id);
    }
    Ok((set, ids))
}

#[cfg(test)]
mod tests;
