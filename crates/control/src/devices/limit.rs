//! The device limit after registration: an account can hold more active
//! devices than its subscription covers (a smaller plan granted after a
//! larger one). The oldest devices, up to the limit, keep working; the
//! newer ones are marked `over_limit` and refused with `device_limit`
//! until the owner revokes one, which frees a place for the next. The mark
//! is kept on the device row, so the access check reads nothing more.
//! [`places`] decides (pure, tested below); [`fit_device_limit!`] applies
//! it inside the transaction of the change that calls for it (a grant, a
//! revocation).

use crate::ids::DeviceId;

/// What changes for an account's active devices, oldest first, each with
/// its mark, under a limit of `limit` devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Places {
    /// Devices to mark: beyond the limit and not marked yet.
    pub newly_over: Vec<DeviceId>,
    /// Devices to unmark: within the limit and still marked.
    pub newly_within: Vec<DeviceId>,
}

impl Places {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.newly_over.is_empty() && self.newly_within.is_empty()
    }
}

/// Splits `active` (oldest first, with each one's current mark) at
/// `limit`: the first `limit` are within it, the rest beyond. Without a
/// limit (no subscription stored active) every one is within.
pub fn places(active: &[(DeviceId, bool)], limit: Option<i32>) -> Places {
    let keep = limit.map_or(usize::MAX, |l| {
        usize::try_from(l.max(0)).unwrap_or(usize::MAX)
    });
    let mut out = Places::default();
    for (i, (id, over)) in active.iter().enumerate() {
        match (i < keep, *over) {
            (true, true) => out.newly_within.push(*id),
            (false, false) => out.newly_over.push(*id),
            _ => {}
        }
    }
    out
}

/// Holds the row of account `$user` on `$conn` to the end of the
/// transaction (its `updated_at` set to `$ts`): registrations, revocations
/// and subscription changes of one account take it before they count or
/// fit its devices, so they queue instead of racing (a PostgreSQL row
/// lock; SQLite takes its write lock). Expands to the rows touched: 0 when
/// there is no such account.
#[macro_export]
macro_rules! hold_owner {
    ($conn:expr, $user:expr, $ts:expr) => {
        diesel::update($crate::db::schema::users::table.find($user))
            .set($crate::db::schema::users::updated_at.eq($ts))
            .execute($conn)
            .await?
    };
}

/// Fits the active devices of user `$user` on `$conn` (inside a
/// transaction that holds the user's row, so registrations of the same
/// user wait) to the device limit of the user's subscription stored as
/// active (none: no device is beyond a limit): marks the newest beyond it,
/// unmarks the ones now within it, ends the open sessions of the newly marked ones with
/// `device_limit` (their CLOSED events go in `$outbox`) at `$ts`, and
/// publishes an access event when anything changed, so gateways forget
/// what they were told about the account. Expands to the [`Places`].
#[macro_export]
macro_rules! fit_device_limit {
    ($conn:expr, $outbox:expr, $user:expr, $ts:expr) => {{
        use $crate::db::schema::{devices, subscriptions};
        use $crate::status::{DeviceStatus, EndReason, SubscriptionStatus};
        let limit: Option<i32> = subscriptions::table
            .filter(subscriptions::user_id.eq($user))
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .select(subscriptions::device_limit)
            .first($conn)
            .await
            .optional()?;
        let active: Vec<($crate::ids::DeviceId, bool)> = devices::table
            .filter(devices::user_id.eq($user))
            .filter(devices::status.eq(DeviceStatus::Active))
            .order((devices::created_at.asc(), devices::id.asc()))
            .select((devices::id, devices::over_limit))
            .load($conn)
            .await?;
        let places = $crate::devices::limit::places(&active, limit);
        if !places.newly_over.is_empty() {
            diesel::update(devices::table.filter(devices::id.eq_any(&places.newly_over)))
                .set(devices::over_limit.eq(true))
                .execute($conn)
                .await?;
            $crate::end_open_sessions!(
                $conn,
                $outbox,
                &places.newly_over,
                EndReason::DeviceLimit,
                $ts
            );
        }
        if !places.newly_within.is_empty() {
            diesel::update(devices::table.filter(devices::id.eq_any(&places.newly_within)))
                .set(devices::over_limit.eq(false))
                .execute($conn)
                .await?;
        }
        if !places.is_empty() {
            $outbox.access($crate::events::AccessChange::DeviceLimit, Some($user));
            for device in places.newly_over.iter().chain(&places.newly_within) {
                $outbox.device($crate::feed::DeviceChange::now(
                    $crate::feed::DeviceEventKind::LimitChanged,
                    *device,
                    $user,
                ));
            }
        }
        places
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<DeviceId> {
        (0..n).map(|_| DeviceId::random()).collect()
    }

    #[test]
    fn the_oldest_keep_their_places() {
        let d = ids(4);
        let active: Vec<_> = d.iter().map(|id| (*id, false)).collect();
        let p = places(&active, Some(2));
        assert_eq!(p.newly_over, vec![d[2], d[3]]);
        assert!(p.newly_within.is_empty());
    }

    #[test]
    fn a_freed_place_goes_to_the_next_oldest() {
        let d = ids(3);
        // The oldest was revoked (gone from the list); two marked remain.
        let active = vec![(d[1], true), (d[2], true)];
        let p = places(&active, Some(1));
        assert_eq!(p.newly_within, vec![d[1]]);
        assert!(p.newly_over.is_empty());
    }

    #[test]
    fn marks_already_right_change_nothing() {
        let d = ids(3);
        let active = vec![(d[0], false), (d[1], true), (d[2], true)];
        assert!(places(&active, Some(1)).is_empty());
        let all_within = vec![(d[0], false), (d[1], false)];
        assert!(places(&all_within, Some(5)).is_empty());
        assert!(places(&[], Some(1)).is_empty());
    }

    #[test]
    fn a_larger_limit_unmarks_everyone_within_it() {
        let d = ids(3);
        let active = vec![(d[0], false), (d[1], true), (d[2], true)];
        let p = places(&active, Some(3));
        assert_eq!(p.newly_within, vec![d[1], d[2]]);
        assert!(p.newly_over.is_empty());
    }

    #[test]
    fn without_a_subscription_nobody_is_beyond_a_limit() {
        let d = ids(2);
        let active = vec![(d[0], false), (d[1], true)];
        assert_eq!(places(&active, None).newly_within, vec![d[1]]);
    }

    #[test]
    fn a_limit_below_one_marks_everyone() {
        let d = ids(2);
        let active = vec![(d[0], false), (d[1], false)];
        assert_eq!(places(&active, Some(0)).newly_over, d);
        assert_eq!(places(&active, Some(-3)).newly_over, d);
    }
}
