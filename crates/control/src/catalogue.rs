//! The catalogue: plans and regions.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{audit, validate};
use crate::actor::Actor;
use crate::auth;
use crate::db::Db;
use crate::db::models::{Plan, Region, now};
use crate::db::schema::{audit_log, plans, regions};
use crate::error::{AppError, AppResult};
use crate::ids::{PlanId, RegionId};
pub use crate::status::ResetPeriod;
use crate::{db_run, db_tx, paginate};

/// Shadowsocks ciphers every part of the system supports (what Outline apps
/// and shadowsocks-service share).
pub const METHODS: [&str; 3] = ["chacha20-ietf-poly1305", "aes-128-gcm", "aes-256-gcm"];

/// Checks a cipher name.
pub fn method(value: &str) -> AppResult<String> {
    let v = value.trim().to_lowercase();
    if METHODS.contains(&v.as_str()) {
        Ok(v)
    } else {
        Err(AppError::bad(format!(
            "method must be one of {}",
            METHODS.join(", ")
        )))
    }
}

/// A plan's name held by another (in any case).
const PLAN_NAME_TAKEN: &str = "a plan with this name exists";

/// Fields of a new plan.
#[derive(Debug, Clone)]
pub struct NewPlan {
    /// Unique name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
    /// ISO currency code.
    pub currency: String,
    /// Length of a subscription, in days.
    pub duration_days: i32,
    /// Traffic allowance in bytes; `None` is unlimited.
    pub traffic_limit_bytes: Option<i64>,
    /// Most active devices.
    pub device_limit: i32,
    /// When the allowance starts over.
    pub reset_period: ResetPeriod,
}

/// Changes to a plan; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = plans)]
pub struct PlanChanges {
    /// New name.
    pub name: Option<String>,
    /// New price.
    pub price_cents: Option<i64>,
    /// New duration.
    pub duration_days: Option<i32>,
    /// New allowance (`Some(None)` makes it unlimited).
    pub traffic_limit_bytes: Option<Option<i64>>,
    /// New device limit.
    pub device_limit: Option<i32>,
}

fn check_plan_fields(p: &mut PlanChanges) -> AppResult<()> {
    if let Some(n) = &p.name {
        p.name = Some(validate::text("name", n, 1, 100)?);
    }
    if let Some(v) = p.price_cents {
        validate::range("priceCents", v, 0, 1_000_000_000)?;
    }
    if let Some(v) = p.duration_days {
        validate::range("durationDays", v.into(), 1, 3660)?;
    }
    if let Some(Some(v)) = p.traffic_limit_bytes {
        validate::range("trafficLimitBytes", v, 0, i64::MAX)?;
    }
    if let Some(v) = p.device_limit {
        validate::range("deviceLimit", v.into(), 1, 1000)?;
    }
    Ok(())
}

/// Admin: adds a plan.
pub async fn create_plan(db: &Db, actor: &Actor, input: NewPlan) -> AppResult<Plan> {
    actor.require_admin()?;
    let mut fields = PlanChanges {
        name: Some(input.name),
        price_cents: Some(input.price_cents),
        duration_days: Some(input.duration_days),
        traffic_limit_bytes: Some(input.traffic_limit_bytes),
        device_limit: Some(input.device_limit),
    };
    check_plan_fields(&mut fields)?;
    let currency = input.currency.trim().to_uppercase();
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(AppError::bad(
            "currency must be a three-letter code such as USD",
        ));
    }
    let ts = now();
    let plan = Plan {
        id: PlanId::random(),
        name: fields.name.unwrap_or_default(),
        price_cents: input.price_cents,
        currency,
        duration_days: input.duration_days,
        traffic_limit_bytes: input.traffic_limit_bytes,
        device_limit: input.device_limit,
        reset_period: input.reset_period,
        archived: false,
        created_at: ts,
        updated_at: ts,
    };
    let entry = audit::entry(
        actor,
        "create_plan",
        "plan",
        Some(&plan.id.to_string()),
        serde_json::json!({"name": plan.name}),
    );
    db_tx!(db, |conn, _| {
        crate::refuse_taken!(conn, plans, name, &plan.name, plan.id, PLAN_NAME_TAKEN);
        let p = diesel::insert_into(plans::table)
            .values(&plan)
            .returning(Plan::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(PLAN_NAME_TAKEN))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(p)
    })
}

/// Admin: changes a plan. Existing subscriptions keep their terms (allowance,
/// device limit, duration): the change applies to grants from now on.
pub async fn update_plan(
    db: &Db,
    actor: &Actor,
    id: PlanId,
    mut changes: PlanChanges,
) -> AppResult<Plan> {
    actor.require_admin()?;
    check_plan_fields(&mut changes)?;
    if changes.name.is_none()
        && changes.price_cents.is_none()
        && changes.duration_days.is_none()
        && changes.traffic_limit_bytes.is_none()
        && changes.device_limit.is_none()
    {
        // Nothing to change: answered as it is, nothing audited.
        return plan_as_it_is(db, id).await;
    }
    db_tx!(db, |conn, _| {
        if let Some(name) = &changes.name {
            crate::refuse_taken!(conn, plans, name, name, id, PLAN_NAME_TAKEN);
        }
        let was: Plan = plans::table
            .find(id)
            .select(Plan::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("plan"))?;
        let ts = now();
        let p = diesel::update(plans::table.find(id))
            .set((&changes, plans::updated_at.eq(ts)))
            .returning(Plan::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(AppError::on_conflict(PLAN_NAME_TAKEN))?
            .ok_or(AppError::NotFound("plan"))?;
        // Values it had already change nothing and are not audited.
        let change = plan_change(&was, &p);
        if change["previous"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
        {
            let entry = audit::entry(actor, "update_plan", "plan", Some(&id.to_string()), change);
            diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>(p)
    })
}

/// What an update changed in a plan, for its audit entry: each field that
/// changed at its new value, and under `previous` at its old one (byte
/// and cent counts as decimal strings, as the API writes them).
fn plan_change(was: &Plan, now: &Plan) -> serde_json::Value {
    let mut new = serde_json::Map::new();
    let mut old = serde_json::Map::new();
    let mut note = |field: &str, before: serde_json::Value, after: serde_json::Value| {
        if before != after {
            old.insert(field.to_owned(), before);
            new.insert(field.to_owned(), after);
        }
    };
    let text = |v: Option<i64>| v.map_or(serde_json::Value::Null, |n| n.to_string().into());
    note("name", was.name.clone().into(), now.name.clone().into());
    note(
        "priceCents",
        text(Some(was.price_cents)),
        text(Some(now.price_cents)),
    );
    note(
        "durationDays",
        was.duration_days.into(),
        now.duration_days.into(),
    );
    note(
        "trafficLimitBytes",
        text(was.traffic_limit_bytes),
        text(now.traffic_limit_bytes),
    );
    note(
        "deviceLimit",
        was.device_limit.into(),
        now.device_limit.into(),
    );
    new.insert("previous".to_owned(), old.into());
    new.into()
}

/// Admin: archives a plan: no new grants, existing subscriptions run on.
pub async fn archive_plan(db: &Db, actor: &Actor, id: PlanId) -> AppResult<Plan> {
    actor.require_admin()?;
    let archived = db_tx!(db, |conn, _| {
        let p = diesel::update(plans::table.find(id))
            .filter(plans::archived.eq(false))
            .set((plans::archived.eq(true), plans::updated_at.eq(now())))
            .returning(Plan::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        if let Some(p) = &p {
            let entry = audit::entry(
                actor,
                "archive_plan",
                "plan",
                Some(&id.to_string()),
                serde_json::json!({ "name": p.name }),
            );
            diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>(p)
    })?;
    match archived {
        Some(p) => Ok(p),
        // Archived already: answered as it is, nothing audited.
        None => plan_as_it_is(db, id).await,
    }
}

/// The plan `id` as stored.
async fn plan_as_it_is(db: &Db, id: PlanId) -> AppResult<Plan> {
    plans_by_ids(db, &[id])
        .await?
        .pop()
        .ok_or(AppError::NotFound("plan"))
}

/// A page of plans; archived ones only for admins who ask.
pub async fn list_plans(
    db: &Db,
    actor: &Actor,
    include_archived: bool,
    page: &PageArgs,
) -> AppResult<Page<Plan>> {
    let include_archived = include_archived && actor.is_admin();
    let rows = db_run!(db, |conn| {
        let mut q = plans::table.select(Plan::as_select()).into_boxed();
        if !include_archived {
            q = q.filter(plans::archived.eq(false));
        }
        paginate!(q, plans, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads plans by id.
pub async fn plans_by_ids(db: &Db, ids: &[PlanId]) -> AppResult<Vec<Plan>> {
    Ok(db_run!(db, |conn| plans::table
        .filter(plans::id.eq_any(ids))
        .select(Plan::as_select())
        .load(conn)
        .await?))
}

/// Admin: adds a region with a fresh pool key.
pub async fn create_region(
    db: &Db,
    actor: &Actor,
    code: &str,
    name: &str,
    pool_method: Option<&str>,
) -> AppResult<Region> {
    actor.require_admin()?;
    let region = Region {
        id: RegionId::random(),
        code: validate::code("code", code)?,
        name: validate::text("name", name, 1, 100)?,
        pool_method: method(pool_method.unwrap_or(METHODS[0]))?,
        pool_secret: auth::random_secret(24).into(),
        created_at: now(),
    };
    let entry = audit::entry(
        actor,
        "create_region",
        "region",
        Some(&region.id.to_string()),
        serde_json::json!({"code": region.code, "name": region.name, "method": region.pool_method}),
    );
    db_tx!(db, |conn, _| {
        let r = diesel::insert_into(regions::table)
            .values(&region)
            .returning(Region::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict("a region with this code exists"))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(r)
    })
}

/// Admin: renames a region. Its code, which gateways, clients and links
/// use, and its pool key stay. The same name again is answered as it is,
/// unaudited.
pub async fn rename_region(db: &Db, actor: &Actor, id: RegionId, name: &str) -> AppResult<Region> {
    actor.require_admin()?;
    let name = validate::text("name", name, 1, 100)?;
    db_tx!(db, |conn, _| {
        let renamed = diesel::update(regions::table.find(id))
            .filter(regions::name.ne(&name))
            .set(regions::name.eq(&name))
            .returning(Region::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(r) = renamed else {
            return regions::table
                .find(id)
                .select(Region::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(AppError::NotFound("region"));
        };
        let entry = audit::entry(
            actor,
            "rename_region",
            "region",
            Some(&id.to_string()),
            serde_json::json!({"code": r.code, "name": r.name}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(r)
    })
}

/// Admin: deletes a region that no node or gateway belongs to (CONFLICT
/// while one does: delete those first). Its code may then be created anew,
/// with a new pool key.
pub async fn delete_region(db: &Db, actor: &Actor, id: RegionId) -> AppResult<()> {
    actor.require_admin()?;
    db_tx!(db, |conn, _| {
        let code: String = diesel::delete(regions::table.find(id))
            .returning(regions::code)
            .get_result(conn)
            .await
            .optional()
            .map_err(|e| match AppError::from(e) {
                // The nodes' and gateways' references RESTRICT the delete.
                AppError::Conflict(_) => AppError::Conflict(
                    "nodes or gateways belong to this region: delete them first".into(),
                ),
                other => other,
            })?
            .ok_or(AppError::NotFound("region"))?;
        let entry = audit::entry(
            actor,
            "delete_region",
            "region",
            Some(&id.to_string()),
            serde_json::json!({"code": code}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(())
    })
}

/// Creates a region if its code is new (for `up`); returns it either way.
pub async fn ensure_region(db: &Db, code: &str, name: &str) -> AppResult<Region> {
    if let Some(r) = region_by_code(db, code).await? {
        return Ok(r);
    }
    let region = Region {
        id: RegionId::random(),
        code: validate::code("code", code)?,
        name: validate::text("name", name, 1, 100)?,
        pool_method: METHODS[0].to_owned(),
        pool_secret: auth::random_secret(24).into(),
        created_at: now(),
    };
    db_run!(db, |conn| diesel::insert_into(regions::table)
        .values(&region)
        .execute(conn)
        .await?);
    Ok(region)
}

/// A page of regions.
pub async fn list_regions(db: &Db, page: &PageArgs) -> AppResult<Page<Region>> {
    let rows = db_run!(db, |conn| {
        let q = regions::table.select(Region::as_select()).into_boxed();
        paginate!(q, regions, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// A region by its code.
pub async fn region_by_code(db: &Db, code: &str) -> AppResult<Option<Region>> {
    let code = code.trim().to_lowercase();
    Ok(db_run!(db, |conn| regions::table
        .filter(regions::code.eq(&code))
        .select(Region::as_select())
        .first(conn)
        .await
        .optional()?))
}

/// Loads regions by id.
pub async fn regions_by_ids(db: &Db, ids: &[RegionId]) -> AppResult<Vec<Region>> {
    Ok(db_run!(db, |conn| regions::table
        .filter(regions::id.eq_any(ids))
        .select(Region::as_select())
        .load(conn)
        .await?))
}
