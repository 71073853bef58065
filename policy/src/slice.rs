//! Splits a customer's policy set by action and by principal group, so a decision evaluates only the
//! policies that can match it, and builds each policy's condition once.
//!
//! Cedar's authorizer evaluates every policy of a set, rebuilding each policy's condition (its scope
//! constraints joined to its `when`/`unless` clauses, a fresh expression tree) on every evaluation, and
//! goes through its partial evaluator even when nothing is unknown. A policy whose action scope excludes
//! the request's action, or whose principal scope is `in Sallyport::Group::"g"` for a group the technician
//! is not in, can be neither satisfied nor fail (the scope is checked before the `when`/`unless`
//! conditions, and `&&` short-circuits), so leaving it out changes nothing but the time taken. Cedar's
//! decision only depends on which permits and forbids are satisfied, so evaluating the slices one by one
//! and joining their satisfied policies gives Cedar's decision for the whole set.
//!
//! Each kept policy is a [`Compiled`]: its id, effect and the condition Cedar's `Policy::condition`
//! builds, made once at load. A decision hands that condition to Cedar's own evaluator
//! (`Evaluator::interpret`), which is what Cedar's `Evaluator::evaluate` does after rebuilding it. The
//! unit tests in `crate::customer` check the result against Cedar's authorizer on the whole set.

use std::collections::HashMap;

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
};
use cedar_policy_core::ast;
use sallyport_ids::GroupName;

use crate::request::Action;
use crate::schema::Shared;

/// One policy, ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// The policy's id, as written (its `@id`, or Cedar's `policyN`).
    pub id: String,
    /// Permit or forbid.
    pub effect: ast::Effect,
    /// The whole condition: scope constraints, then `when` and the negated `unless` clauses.
    pub condition: ast::Expr,
    /// The policy's slot values (empty: templates are refused at load).
    pub env: ast::SlotEnv,
}

impl Compiled {
    fn new(policy: &Policy) -> Self {
        let core: &ast::Policy = policy.as_ref();
        Self {
            id: AsRef::<str>::as_ref(policy.id()).to_owned(),
            effect: core.effect(),
            condition: core.condition(),
            env: core.env().clone(),
        }
    }
}

/// The policies that can apply to one action.
#[derive(Debug, Clone, Default)]
struct ActionPolicies {
    /// Policies whose principal scope names no group: evaluated for every request.
    general: Vec<Compiled>,
    /// Policies whose principal scope is `in Sallyport::Group::"<g>"` (or `is T in` it), by group id.
    by_group: HashMap<String, Vec<Compiled>>,
}

/// A policy set sliced by action ([`Action`] order) and principal group.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sliced {
    by_action: [ActionPolicies; 3],
}

impl Sliced {
    /// Slices `set`. The schema has no action groups, so `action in [..]` is list membership (strict
    /// validation has rejected any action the schema does not declare).
    pub fn new(set: &PolicySet, shared: &Shared) -> Self {
        let mut sliced = Self::default();
        for policy in set.policies() {
            let group = group_of(policy, &shared.group);
            let compiled = Compiled::new(policy);
            for action in [Action::Connect, Action::Request, Action::Approve] {
                let uid = shared.action(action);
                let applies = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == *uid,
                    ActionConstraint::In(list) => list.contains(uid),
                };
                if !applies {
                    continue;
                }
                let slot = &mut sliced.by_action[index(action)];
                let target = match &group {
                    Some(g) => slot.by_group.entry(g.clone()).or_default(),
                    None => &mut slot.general,
                };
                target.push(compiled.clone());
            }
        }
        sliced
    }

    /// The policies that can apply to `action` for a principal in `groups`, each at most once
    /// (repeated groups are skipped).
    pub fn candidates<'a>(
        &'a self,
        action: Action,
        groups: &'a [GroupName],
    ) -> impl Iterator<Item = &'a Compiled> + 'a {
        let slot = &self.by_action[index(action)];
        let by_group = groups.iter().enumerate().filter_map(move |(i, g)| {
            if groups[..i].contains(g) {
                return None;
            }
            slot.by_group.get(g.as_str())
        });
        slot.general.iter().chain(by_group.flatten())
    }
}

/// Index of `action` in [`Sliced::by_action`].
fn index(action: Action) -> usize {
    match action {
        Action::Connect => 0,
        Action::Request => 1,
        Action::Approve => 2,
    }
}

/// The group a policy's principal scope requires membership of, if any.
fn group_of(policy: &Policy, group_type: &EntityTypeName) -> Option<String> {
    match policy.principal_constraint() {
        PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => {
            group_id(&uid, group_type)
        }
        PrincipalConstraint::Any | PrincipalConstraint::Eq(_) | PrincipalConstraint::Is(_) => None,
    }
}

fn group_id(uid: &EntityUid, group_type: &EntityTypeName) -> Option<String> {
    (uid.type_name() == group_type).then(|| uid.id().unescaped().to_owned())
}
