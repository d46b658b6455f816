//! Who is acting on a use case, and what that lets them see and change:
//! the one place that says admins act on anything and users on their own.

use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::status::Role;

/// Who is acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in account, with its role.
    Account {
        /// The account.
        user_id: UserId,
        /// Its role.
        role: Role,
    },
    /// The operator at the command line (`httvps device revoke`): an admin
    /// without an account (audited with no actor).
    Operator,
}

impl Actor {
    /// Whether the actor may act on anything.
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Account { role, .. } => *role == Role::Admin,
            Actor::Operator => true,
        }
    }

    /// The actor's account, if any.
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Actor::Account { user_id, .. } => Some(*user_id),
            Actor::Operator => None,
        }
    }

    /// Refuses anyone but admins.
    pub fn require_admin(&self) -> AppResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// Whether the actor may see and change what `owner` owns.
    pub fn may_act_for(&self, owner: UserId) -> bool {
        self.is_admin() || self.user_id() == Some(owner)
    }

    /// Whether acting on what `owner` owns is an admin acting on someone
    /// else's (what the audit log records).
    pub fn acts_for_other(&self, owner: UserId) -> bool {
        self.is_admin() && self.user_id() != Some(owner)
    }

    /// Whose things a list shows: admins see what they ask for (`None`:
    /// everyone's), users their own; a user asking for another's is
    /// refused (`FORBIDDEN`, as `usage` and `user` refuse it), not answered
    /// with their own as if they were the other's.
    pub fn scope(&self, requested: Option<UserId>) -> crate::error::AppResult<Option<UserId>> {
        match self {
            Actor::Account { user_id, .. } if !self.is_admin() => match requested {
                Some(other) if other != *user_id => Err(crate::error::AppError::Forbidden),
                _ => Ok(Some(*user_id)),
            },
            _ => Ok(requested),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_scoped_to_their_own_admins_to_what_they_ask() {
        let me = UserId::random();
        let other = UserId::random();
        let user = Actor::Account {
            user_id: me,
            role: Role::User,
        };
        let admin = Actor::Account {
            user_id: me,
            role: Role::Admin,
        };
        assert!(user.scope(Some(other)).is_err());
        assert_eq!(user.scope(Some(me)).ok(), Some(Some(me)));
        assert_eq!(user.scope(None).ok(), Some(Some(me)));
        assert_eq!(admin.scope(Some(other)).ok(), Some(Some(other)));
        assert_eq!(admin.scope(None).ok(), Some(None));
        assert_eq!(Actor::Operator.scope(None).ok(), Some(None));
        assert!(user.may_act_for(me) && !user.may_act_for(other));
        assert!(admin.may_act_for(other) && Actor::Operator.may_act_for(other));
        assert!(user.require_admin().is_err() && Actor::Operator.require_admin().is_ok());
        assert!(admin.acts_for_other(other) && !admin.acts_for_other(me));
        assert!(!user.acts_for_other(other));
    }
}
