//! Who sees what: tenants are walls. A provider admin sees everything, a customer's approvers and
//! auditors see that customer's objects, a technician sees their own. Every read and every action
//! on a request, grant or session goes through [`Scope::sees`]; what it hides is reported as missing.

use sallyport_ids::{CustomerId, Principal, SpiffeId};

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Provider admins.
    All,
    /// A customer's approvers and auditors.
    Customer(CustomerId),
    /// A technician: their own requests and sessions.
    Technician(SpiffeId),
}

impl Scope {
    /// The scope of the holder of `id`.
    pub fn of(id: &SpiffeId) -> Scope {
        match id.principal() {
            Principal::Admin { .. } => Scope::All,
            Principal::Approver { customer, .. } | Principal::Auditor { customer, .. } => {
                Scope::Customer(customer.clone())
            }
            Principal::Technician { .. } => Scope::Technician(id.clone()),
        }
    }

    /// Whether an object of `customer`, concerning `technician`, is visible.
    pub fn sees(&self, customer: &CustomerId, technician: &SpiffeId) -> bool {
        match self {
            Scope::All => true,
            Scope::Customer(c) => c == customer,
            Scope::Technician(t) => t == technician,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_walls() {
        let id = |s: &str| -> SpiffeId { s.parse().unwrap() };
        let (acme, globex): (CustomerId, CustomerId) =
            ("acme".parse().unwrap(), "globex".parse().unwrap());
        let a = id("spiffe://sallyport.local/technician/northwind/a");
        let b = id("spiffe://sallyport.local/technician/northwind/b");
        let of_acme = Scope::of(&id("spiffe://sallyport.local/auditor/acme/carol"));
        assert_eq!(of_acme, Scope::Customer(acme.clone()));
        assert!(of_acme.sees(&acme, &a));
        assert!(!of_acme.sees(&globex, &a));
        let alice = Scope::of(&a);
        assert!(alice.sees(&acme, &a) && !alice.sees(&acme, &b));
        let admin = Scope::of(&id("spiffe://sallyport.local/admin/root"));
        assert!(admin.sees(&globex, &b));
    }
}
