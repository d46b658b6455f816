//! Enrollment: a gateway or node trades the one-time token of its
//! enrollment string (the token it was registered or re-keyed with) for a
//! machine token of its own. The swap is a compare-and-set on the stored
//! hash, so a string is good for one redemption however many are tried at
//! once; a second one finds the token gone (401).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::machines::{Machine, authenticate_machine};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::schema::{audit_log, gateway_nodes, outline_nodes};
use crate::db_tx;
use crate::error::{AppError, AppResult};
use crate::{audit, auth};

/// What a redeemed enrollment gives the machine.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `gateway` or `node`.
    pub kind: &'static str,
    /// The machine's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its new machine token (shown once).
    pub token: String,
}

/// Redeems the one-time token `presented`: replaces it with a new machine
/// token, which is returned; the presented one stops working.
pub async fn redeem(db: &Db, presented: &str) -> AppResult<Enrolled> {
    // Always from the database: a cached answer could outlive the swap.
    let machine = authenticate_machine(db, presented).await?;
    let old = auth::hash_token(presented);
    let token = auth::new_token();
    let new = auth::hash_token(&token);
    let (kind, id, name) = match &machine {
        Machine::Gateway(g) => ("gateway", g.id.to_string(), g.name.clone()),
        Machine::Outline(n) => ("node", n.id.to_string(), n.name.clone()),
    };
    let entry = audit::entry(
        &Actor::Operator,
        "enroll",
        if kind == "gateway" {
            "gateway_node"
        } else {
            "outline_node"
        },
        Some(&id),
        serde_json::json!({"name": name}),
    );
    db_tx!(db, |conn, _| {
        let swapped = match &machine {
            Machine::Gateway(g) => {
                diesel::update(
                    gateway_nodes::table
                        .find(g.id)
                        .filter(gateway_nodes::token_hash.eq(&old)),
                )
                .set(gateway_nodes::token_hash.eq(&new))
                .execute(conn)
                .await?
            }
            Machine::Outline(n) => {
                diesel::update(
                    outline_nodes::table
                        .find(n.id)
                        .filter(outline_nodes::token_hash.eq(&old)),
                )
                .set(outline_nodes::token_hash.eq(&new))
                .execute(conn)
                .await?
            }
        };
        if swapped == 0 {
            // Redeemed (or re-keyed) by someone else meanwhile.
            return Err(AppError::Unauthenticated);
        }
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(())
    })?;
    Ok(Enrolled {
        kind,
        id,
        name,
        token,
    })
}
