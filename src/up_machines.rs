//! The node and gateway `up` runs, as the registry knows them: registered
//! on the first start, found again on later ones by the ids kept in the
//! data directory (`up-machines.json`), so an operator may rename them (a
//! lookup by name would register new ones beside the renamed, and take over
//! any other machine given the old name). A machine with no id kept (a
//! data directory from before the file, a start stopped halfway) or whose
//! recorded one was deleted is matched by the name `up` gives it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use httvps_control::actor::Actor;
use httvps_control::db::Db;
use httvps_control::db::schema::{gateway_nodes, outline_nodes};
use httvps_control::error::AppError;
use httvps_control::ids::{GatewayNodeId, OutlineNodeId};
use httvps_control::nodes::{self, EnrollmentTtl, GatewayChanges, NewOutlineNode};
use uuid::Uuid;

/// The file, in the data directory.
const FILE: &str = "up-machines.json";

/// Names `up` registers its machines under.
const NODE_NAME: &str = "local-node";
const GATEWAY_NAME: &str = "local-gateway";

/// What the file holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Ids {
    node: Option<Uuid>,
    gateway: Option<Uuid>,
}

/// `up`'s machines in the registry, for one start.
pub(crate) struct Local<'a> {
    db: &'a Db,
    admin: Actor,
    file: PathBuf,
    ids: Ids,
}

fn fail(e: AppError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Moves the node `id` to 127.0.0.1:`port` (its port is new at every
/// start: `up`'s own bookkeeping, not an operator's change, so not
/// audited); false when there is no such node.
async fn move_node(db: &Db, id: OutlineNodeId, port: i32) -> anyhow::Result<bool> {
    let moved = httvps_control::db_run!(db, |conn| diesel::update(outline_nodes::table.find(id))
        .set((
            outline_nodes::host.eq("127.0.0.1"),
            outline_nodes::port.eq(port)
        ))
        .execute(conn)
        .await
        .map_err(AppError::from))
    .map_err(fail)?;
    Ok(moved == 1)
}

impl<'a> Local<'a> {
    /// Reads the ids kept in `data_dir` (none on a first start; none
    /// either, with a warning, from a file that cannot be read as one: the
    /// machines are then matched by name).
    pub(crate) fn open(db: &'a Db, admin: Actor, data_dir: &Path) -> anyhow::Result<Self> {
        let file = data_dir.join(FILE);
        let ids = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "unreadable machine ids: matching the machines by name");
                Ids::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ids::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Local {
            db,
            admin,
            file,
            ids,
        })
    }

    /// The embedded node, at 127.0.0.1:`port`: the one recorded, else (not
    /// recorded, or deleted since) the one under the name `up` gives it,
    /// else a new one.
    pub(crate) async fn node(&mut self, port: i32) -> anyhow::Result<OutlineNodeId> {
        let db = self.db;
        let mut found = match self.ids.node.map(OutlineNodeId::from) {
            Some(id) if move_node(db, id, port).await? => Some(id),
            _ => None,
        };
        if found.is_none() {
            let named: Option<OutlineNodeId> =
                httvps_control::db_run!(db, |conn| outline_nodes::table
                    .filter(outline_nodes::name.eq(NODE_NAME))
                    .select(outline_nodes::id)
                    .first(conn)
                    .await
                    .optional()
                    .map_err(AppError::from))
                .map_err(fail)?;
            if let Some(id) = named
                && move_node(db, id, port).await?
            {
                found = Some(id);
            }
        }
        let id = match found {
            Some(id) => id,
            None => {
                let input = NewOutlineNode {
                    region: "local".into(),
                    name: NODE_NAME.into(),
                    host: "127.0.0.1".into(),
                    port,
                    method: None,
                    secret: None,
                    capacity: 1000,
                };
                nodes::register_outline(db, &self.admin, input, EnrollmentTtl::default())
                    .await
                    .map_err(fail)
                    .with_context(|| {
                        format!(
                            "registering the embedded node as {NODE_NAME} (another node has \
                             that name: rename it with `httvps node update <id> --name …` on \
                             this database)"
                        )
                    })?
                    .0
                    .id
            }
        };
        self.ids.node = Some(id.uuid());
        self.save()?;
        Ok(id)
    }

    /// The embedded gateway, its registered URL set to `url`: found as the
    /// node is, else registered.
    pub(crate) async fn gateway(&mut self, url: &str) -> anyhow::Result<GatewayNodeId> {
        let db = self.db;
        let admin = self.admin;
        // Its URL follows the port it listens at this time (links carry
        // it); a start on the same port changes nothing.
        let at = |id| async move {
            let changes = GatewayChanges {
                name: None,
                public_url: Some(url.to_owned()),
            };
            match nodes::update_gateway(db, &admin, id, changes, None).await {
                Ok(g) => Ok(Some(g.id)),
                Err(AppError::NotFound(_)) => Ok(None),
                Err(e) => Err(fail(e)),
            }
        };
        let mut found = match self.ids.gateway {
            Some(id) => at(GatewayNodeId::from(id)).await?,
            None => None,
        };
        if found.is_none() {
            let named: Option<GatewayNodeId> =
                httvps_control::db_run!(db, |conn| gateway_nodes::table
                    .filter(gateway_nodes::name.eq(GATEWAY_NAME))
                    .select(gateway_nodes::id)
                    .first(conn)
                    .await
                    .optional()
                    .map_err(AppError::from))
                .map_err(fail)?;
            if let Some(id) = named {
                found = at(id).await?;
            }
        }
        let id = match found {
            Some(id) => id,
            None => {
                nodes::register_gateway(
                    db,
                    &self.admin,
                    "local",
                    GATEWAY_NAME,
                    url,
                    EnrollmentTtl::default(),
                )
                .await
                .map_err(fail)
                .with_context(|| {
                    format!(
                        "registering the embedded gateway as {GATEWAY_NAME} (another gateway \
                         has that name: rename it with `httvps gateway update <id> --name …` \
                         on this database)"
                    )
                })?
                .0
                .id
            }
        };
        self.ids.gateway = Some(id.uuid());
        self.save()?;
        Ok(id)
    }

    /// Keeps the ids (written aside, then renamed over the file).
    fn save(&self) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(&self.ids).context("encoding the machines' ids")?;
        let aside = self.file.with_extension("json.new");
        let _ = std::fs::remove_file(&aside);
        httvps_dataplane::files::write_private(&aside, &json)
            .and_then(|()| std::fs::rename(&aside, &self.file))
            .with_context(|| format!("writing {}", self.file.display()))
    }
}
