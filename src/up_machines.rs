//! The node and gateway `up` runs, as the registry knows them: registered
//! on the first start, found again on later ones by the ids kept in the
//! data directory (`up-machines.json`), so an operator may rename them (a
//! lookup by name would register new ones beside the renamed, and take over
//! any other machine given the old name). A data directory from before the
//! file is matched by the names `up` gave them, once.

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
    /// Whether the file existed (else names are matched, once).
    known: bool,
}

fn fail(e: AppError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl<'a> Local<'a> {
    /// Reads the ids kept in `data_dir` (none on a first start).
    pub(crate) fn open(db: &'a Db, admin: Actor, data_dir: &Path) -> anyhow::Result<Self> {
        let file = data_dir.join(FILE);
        let (ids, known) = match std::fs::read(&file) {
            Ok(bytes) => (
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", file.display()))?,
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Ids::default(), false),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Local {
            db,
            admin,
            file,
            ids,
            known,
        })
    }

    /// The embedded node, at 127.0.0.1:`port` (registered if it is not).
    pub(crate) async fn node(&mut self, port: i32) -> anyhow::Result<OutlineNodeId> {
        let db = self.db;
        let kept = match self.ids.node {
            Some(id) => Some(OutlineNodeId::from(id)),
            None if !self.known => httvps_control::db_run!(db, |conn| outline_nodes::table
                .filter(outline_nodes::name.eq(NODE_NAME))
                .select(outline_nodes::id)
                .first(conn)
                .await
                .optional()
                .map_err(AppError::from))
            .map_err(fail)?,
            None => None,
        };
        // Its port is new at every start: moved in place (up's own
        // bookkeeping, not an operator's change).
        let moved = match kept {
            Some(id) => {
                httvps_control::db_run!(db, |conn| diesel::update(outline_nodes::table.find(id))
                    .set((
                        outline_nodes::host.eq("127.0.0.1"),
                        outline_nodes::port.eq(port)
                    ))
                    .execute(conn)
                    .await
                    .map_err(AppError::from))
                .map_err(fail)?
            }
            None => 0,
        };
        let id = match kept {
            Some(id) if moved == 1 => id,
            // Never registered, or deleted since.
            _ => {
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
                    .with_context(|| format!("registering the embedded node as {NODE_NAME}"))?
                    .0
                    .id
            }
        };
        self.ids.node = Some(id.uuid());
        self.save()?;
        Ok(id)
    }

    /// The embedded gateway, its registered URL set to `url` (registered if
    /// it is not).
    pub(crate) async fn gateway(&mut self, url: &str) -> anyhow::Result<GatewayNodeId> {
        let db = self.db;
        let kept = match self.ids.gateway {
            Some(id) => Some(GatewayNodeId::from(id)),
            None if !self.known => httvps_control::db_run!(db, |conn| gateway_nodes::table
                .filter(gateway_nodes::name.eq(GATEWAY_NAME))
                .select(gateway_nodes::id)
                .first(conn)
                .await
                .optional()
                .map_err(AppError::from))
            .map_err(fail)?,
            None => None,
        };
        let existing = match kept {
            // Its URL follows the port it listens at this time (links
            // carry it); a start on the same port changes nothing.
            Some(id) => {
                let at = GatewayChanges {
                    name: None,
                    public_url: Some(url.to_owned()),
                };
                match nodes::update_gateway(db, &self.admin, id, at, None).await {
                    Ok(g) => Some(g.id),
                    Err(AppError::NotFound(_)) => None,
                    Err(e) => return Err(fail(e)),
                }
            }
            None => None,
        };
        let id = match existing {
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
                .with_context(|| format!("registering the embedded gateway as {GATEWAY_NAME}"))?
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
