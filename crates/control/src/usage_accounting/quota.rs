//! What a chunk's charges did to allowances, for the admin feed.

use chrono::NaiveDateTime;

use super::plan::{Charge, Charged};
use crate::access;
use crate::feed::QuotaEventKind;

/// The subscriptions whose period started over at `now` (the charge itself
/// reset it), and those this chunk's charge took from under their
/// allowance to it.
pub fn quota_changes<'a>(
    charges: &[Charge],
    charged: &'a [Charged],
    now: NaiveDateTime,
) -> Vec<(QuotaEventKind, &'a Charged)> {
    let mut out = Vec::new();
    for c in charged {
        let delta = charges
            .iter()
            .filter(|x| x.user_id == c.user_id)
            .map(|x| x.delta)
            .fold(0i64, i64::saturating_add);
        let reset = c.period_start == now;
        if reset {
            out.push((QuotaEventKind::PeriodReset, c));
        }
        let before = if reset {
            0
        } else {
            c.traffic_used_bytes.saturating_sub(delta)
        };
        let limit = c.traffic_limit_bytes;
        if delta > 0
            && access::quota_spent(c.traffic_used_bytes, limit)
            && !access::quota_spent(before, limit)
        {
            out.push((QuotaEventKind::QuotaReached, c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::now;
    use crate::ids::{SubscriptionId, UserId};

    fn charged(
        user_id: UserId,
        used: i64,
        limit: Option<i64>,
        period_start: NaiveDateTime,
    ) -> Charged {
        Charged {
            id: SubscriptionId::random(),
            user_id,
            traffic_used_bytes: used,
            traffic_limit_bytes: limit,
            period_start,
        }
    }

    #[test]
    fn crossing_the_allowance_is_reported_once() {
        let (t, earlier) = (now(), now() - chrono::Duration::days(3));
        let u = UserId::random();
        let charge = [Charge {
            user_id: u,
            delta: 100,
        }];
        // 950 -> 1050 of 1000: reached.
        let rows = [charged(u, 1050, Some(1000), earlier)];
        let got = quota_changes(&charge, &rows, t);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, QuotaEventKind::QuotaReached);
        // 1050 -> 1150: already spent before, nothing new.
        let rows = [charged(u, 1150, Some(1000), earlier)];
        assert!(quota_changes(&charge, &rows, t).is_empty());
        // Exactly at the allowance counts as reached (quota_spent is >=).
        let rows = [charged(u, 1000, Some(1000), earlier)];
        assert_eq!(quota_changes(&charge, &rows, t).len(), 1);
        // Unlimited: never.
        let rows = [charged(u, i64::MAX, None, earlier)];
        assert!(quota_changes(&charge, &rows, t).is_empty());
    }

    #[test]
    fn a_reset_by_the_charge_is_reported_and_counts_from_zero() {
        let t = now();
        let u = UserId::random();
        let charge = [Charge {
            user_id: u,
            delta: 10,
        }];
        let rows = [charged(u, 10, Some(1000), t)];
        let got = quota_changes(&charge, &rows, t);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            [QuotaEventKind::PeriodReset]
        );
        // A new period whose first charge already spends the allowance.
        let charge = [Charge {
            user_id: u,
            delta: 2000,
        }];
        let rows = [charged(u, 2000, Some(1000), t)];
        let kinds: Vec<_> = quota_changes(&charge, &rows, t)
            .iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(
            kinds,
            [QuotaEventKind::PeriodReset, QuotaEventKind::QuotaReached]
        );
    }
}
