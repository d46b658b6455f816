//! Enrollment strings for machines already registered: what a console
//! shows to start a machine again with a new token.

use async_graphql::{Context, Object, SimpleObject};
use uuid::Uuid;

use super::{AdminOnly, AppContext, GqlResultExt, actor};
use crate::db::models::SecretText;
use crate::events::NodeKind;
use crate::nodes;

/// A machine's new token with its enrollment string (shown this once).
#[derive(SimpleObject, Debug)]
pub struct NodeEnrollment {
    /// One-time enrollment string for `httvps-relay node --enroll` or
    /// `httvps-relay gateway --enroll` (control-plane URL, pin, the new
    /// token); null when the control plane has no BACKEND_PUBLIC_URL.
    pub enrollment: Option<SecretText>,
    /// Which kind of machine the token is for.
    pub kind: NodeKind,
    /// The new machine token, for `Authorization: Bearer` on /api/v1.
    pub token: SecretText,
}

/// Enrollment mutations.
#[derive(Default)]
pub struct EnrollmentMutation;

#[Object]
impl EnrollmentMutation {
    /// Admin: replaces a node's or gateway's machine token, as
    /// `rotateNodeToken` does, and returns it once with its enrollment
    /// string, which works for `enrollmentTtlHours` (1-720; default 24)
    /// unless redeemed or used.
    #[graphql(guard = "AdminOnly")]
    async fn rotate_node_enrollment(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        enrollment_ttl_hours: Option<i32>,
    ) -> async_graphql::Result<NodeEnrollment> {
        let api = ctx.data::<AppContext>()?;
        let ttl = super::nodes::ttl_hours(enrollment_ttl_hours).gql()?;
        let (token, _, kind) = nodes::rotate_token(&api.db, &actor(ctx)?, id, ttl)
            .await
            .gql()?;
        api.machines.forget(id);
        let of = match kind {
            NodeKind::Outline => "node",
            NodeKind::Gateway => "gateway",
        };
        Ok(NodeEnrollment {
            enrollment: api.enroll.as_ref().map(|e| e.string(of, &token).into()),
            kind,
            token: token.into(),
        })
    }
}
