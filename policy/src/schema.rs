//! The Sallyport schema, parsed once per process, with the entity type names and action ids that every
//! decision reuses.

use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema, Validator};

use crate::{Action, PolicyError, SCHEMA};

/// Everything derived from [`SCHEMA`] that is shared by all customers.
pub(crate) struct Shared {
    /// The parsed schema.
    pub schema: Schema,
    /// A strict-mode validator for it.
    pub validator: Validator,
    /// `Sallyport::Technician`.
    pub technician: EntityTypeName,
    /// `Sallyport::Group`.
    pub group: EntityTypeName,
    /// `Sallyport::Target`.
    pub target: EntityTypeName,
    /// `Sallyport::Approver`.
    pub approver: EntityTypeName,
    /// `Sallyport::Customer`.
    pub customer: EntityTypeName,
    /// `Sallyport::Action::"connect"`, `"request"` and `"approve"`, in [`Action`] order.
    actions: [EntityUid; 3],
    /// The extension function name `ip`, parsed once (see [`crate::entities`]).
    pub ip_fn: cedar_policy_core::ast::Name,
    /// The bundled IANA time zone database (no file system access).
    pub tzdb: jiff::tz::TimeZoneDatabase,
}

impl Shared {
    /// The Cedar action uid for `action`.
    pub fn action(&self, action: Action) -> &EntityUid {
        match action {
            Action::Connect => &self.actions[0],
            Action::Request => &self.actions[1],
            Action::Approve => &self.actions[2],
        }
    }

    fn load() -> Result<Self, PolicyError> {
        let internal = |e: &dyn std::fmt::Display| PolicyError::Internal(e.to_string());
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| internal(&e))?;
        let ty = |name: &str| EntityTypeName::from_str(name).map_err(|e| internal(&e));
        let action_ty = ty("Sallyport::Action")?;
        let action =
            |id: &str| EntityUid::from_type_name_and_id(action_ty.clone(), EntityId::new(id));
        Ok(Self {
            validator: Validator::new(schema.clone()),
            schema,
            technician: ty("Sallyport::Technician")?,
            group: ty("Sallyport::Group")?,
            target: ty("Sallyport::Target")?,
            approver: ty("Sallyport::Approver")?,
            customer: ty("Sallyport::Customer")?,
            actions: [action("connect"), action("request"), action("approve")],
            ip_fn: cedar_policy_core::ast::Name::parse_unqualified_name("ip")
                .map_err(|e| internal(&e))?,
            tzdb: jiff::tz::TimeZoneDatabase::bundled(),
        })
    }
}

// Cedar's validator has no `Debug`; show nothing.
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared { .. }")
    }
}

static SHARED: LazyLock<Result<Shared, PolicyError>> = LazyLock::new(Shared::load);

/// The shared schema state, loaded on first use.
pub(crate) fn shared() -> Result<&'static Shared, PolicyError> {
    SHARED.as_ref().map_err(|e| {
        PolicyError::Internal(format!("the built-in sallyport schema is invalid: {e}"))
    })
}

/// The parsed [`SCHEMA`], e.g. to validate entities built elsewhere against it.
pub fn cedar_schema() -> Result<&'static Schema, PolicyError> {
    shared().map(|s| &s.schema)
}
