//! Whose billing data a caller may act on. The policy table lets patients, billing staff and
//! administrators in; this says which patient's data: a patient only their own, billing staff
//! and administrators anyone's (for payment: HIPAA's payment purpose). Nobody here sees
//! clinical data, because billing has none.

use carehub_platform::auth::{Role, UserCaller};
use uuid::Uuid;

use crate::error::{BillingError, Result};

/// Whether `user` acts for the billing office (every patient's billing data).
pub fn is_office(user: &UserCaller) -> bool {
    user.has_role(Role::Billing) || user.has_role(Role::Admin)
}

/// PERMISSION_DENIED unless `user` may see `patient`'s billing data.
pub fn may_see(user: &UserCaller, patient: Uuid) -> Result<()> {
    if is_office(user) || (user.has_role(Role::Patient) && user.user_id == patient) {
        Ok(())
    } else {
        Err(BillingError::PermissionDenied(
            "patients see and pay only their own invoices".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, id: Uuid) -> UserCaller {
        UserCaller {
            user_id: id,
            session_id: Uuid::nil(),
            roles: vec![role],
            amr: Vec::new(),
            issued_at: 0,
            expires_at: 0,
            password_change_required: false,
        }
    }

    #[test]
    fn patients_see_their_own_and_the_office_sees_all() {
        let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(may_see(&user(Role::Patient, me), me).is_ok());
        assert!(may_see(&user(Role::Patient, me), other).is_err());
        assert!(may_see(&user(Role::Billing, me), other).is_ok());
        assert!(may_see(&user(Role::Admin, me), other).is_ok());
        for role in [Role::Provider, Role::Staff] {
            assert!(may_see(&user(role, me), me).is_err(), "{role}");
            assert!(may_see(&user(role, me), other).is_err(), "{role}");
        }
    }
}
