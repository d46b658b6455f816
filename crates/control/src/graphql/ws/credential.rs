//! Who a WebSocket acts as: the credential its `connection_init` carries,
//! read into the socket's data, and checked again, beside the engine,
//! whenever accounts or access change.

use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::Data;
use async_graphql::dataloader::DataLoader;
use httvps_wire::Secret;

use super::super::loaders::{BATCH_DELAY, DbLoader};
use super::super::{AppContext, DeviceViewer};
use crate::context::{viewer_from_token, viewer_until};
use crate::error::AppError;
use crate::ids::UserId;
use crate::throttle::ClientAddr;

/// The keys a `connection_init` payload may carry a credential in.
const CREDENTIAL_KEYS: [&str; 4] = ["Authorization", "authorization", "token", "deviceToken"];

/// Whether the payload's credential cannot be read (refused, rather than
/// taken as no credential at all): a payload that is neither an object nor
/// null, a credential that is not a string, or more than one credential
/// (which one would the socket act as?).
pub(super) fn unreadable_credential(payload: &serde_json::Value) -> bool {
    let Some(o) = payload.as_object() else {
        return !payload.is_null();
    };
    let not_strings = CREDENTIAL_KEYS
        .iter()
        .any(|k| o.get(*k).is_some_and(|v| !v.is_string() && !v.is_null()));
    let given = CREDENTIAL_KEYS
        .iter()
        .filter(|k| o.get(**k).is_some_and(serde_json::Value::is_string))
        .count();
    not_strings || given > 1
}

fn bearer(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    for key in ["Authorization", "authorization"] {
        if let Some(v) = obj.get(key).and_then(|v| v.as_str()) {
            let token = httvps_wire::token::bearer(v).unwrap_or(v.trim());
            return Some(token.to_owned());
        }
    }
    obj.get("token").and_then(|v| v.as_str()).map(str::to_owned)
}

/// What a socket signed in with: checked again whenever its account or
/// its access changes, and for a user's token, until its expiry.
#[derive(Debug, Clone)]
pub(super) enum Credential {
    /// An access JWT of a user, valid until `expires_at` (epoch seconds).
    User {
        token: Secret,
        user_id: UserId,
        expires_at: i64,
    },
    /// A device's access token.
    Device { token: Secret, user_id: UserId },
}

impl Credential {
    pub(super) fn user_id(&self) -> UserId {
        match self {
            Credential::User { user_id, .. } | Credential::Device { user_id, .. } => *user_id,
        }
    }

    /// Whether the credential still stands. An unreachable database is no
    /// reason to end a socket: only a refusal is.
    async fn still_valid(&self, api: &AppContext) -> bool {
        match self {
            Credential::User { token, .. } => !matches!(
                viewer_from_token(api, token.expose()).await,
                Err(AppError::Unauthenticated | AppError::Forbidden)
            ),
            Credential::Device { token, .. } => {
                match api.tokens.check(&api.db, token.expose()).await {
                    Ok(verdict) => verdict.admitted().is_ok(),
                    Err(_) => true,
                }
            }
        }
    }
}

pub(super) type CredentialSlot = Arc<Mutex<Option<Credential>>>;

/// Why a `connection_init` was refused for its source's guesses (the
/// throttle's message, with the wait): such a refusal closes 4429, not the
/// 4403 of a credential that does not stand, so a device behind the same
/// address as a guesser knows to come back rather than that it was
/// revoked.
pub(super) type ThrottledSlot = Arc<Mutex<Option<String>>>;

pub(super) async fn init_data(
    api: AppContext,
    from: ClientAddr,
    slot: CredentialSlot,
    throttled: ThrottledSlot,
    payload: serde_json::Value,
) -> async_graphql::Result<Data> {
    if unreadable_credential(&payload) {
        return Err(AppError::Unauthenticated.into_graphql());
    }
    let mut data = Data::default();
    data.insert(from);
    data.insert(DataLoader::new(DbLoader::new(api.db.clone()), tokio::spawn).delay(BATCH_DELAY));
    let credential = if let Some(token) = payload.get("deviceToken").and_then(|v| v.as_str()) {
        // As at /api/v1: a source that presented too many unknown
        // credentials (here or there) is refused before its next one is
        // looked up, unless that one was accepted lately (a device behind
        // the same address as a guesser); an unknown device token counts
        // against the source, and an accepted one is proven.
        let now = std::time::Instant::now();
        if let Err(e) = api.throttles.guesser(from)
            && !api.proven.is_proven(token, now)
        {
            let wait = match &e {
                AppError::Throttled { retry_after_secs } => {
                    format!("retry in {retry_after_secs} s")
                }
                other => other.to_string(),
            };
            *throttled.lock().unwrap_or_else(PoisonError::into_inner) = Some(wait);
            return Err(e.into_graphql());
        }
        let verdict = api
            .tokens
            .check(&api.db, token)
            .await
            .map_err(|e| e.into_graphql())?;
        if verdict.device.is_none() {
            api.throttles.unknown_credential(from);
            api.proven.forget(token);
        }
        // The access rule decides, as for a tunnel: a device that may not
        // connect may not follow the nodes either.
        let device = verdict
            .admitted()
            .map_err(|_| AppError::Unauthenticated.into_graphql())?;
        api.proven.prove(token, now);
        data.insert(DeviceViewer {
            device_id: device.id,
        });
        Some(Credential::Device {
            token: token.into(),
            user_id: device.user_id,
        })
    } else if let Some(token) = bearer(&payload) {
        let (viewer, expires_at) = viewer_until(&api, &token)
            .await
            .map_err(|e| e.into_graphql())?;
        let user_id = viewer.user_id;
        data.insert(viewer);
        Some(Credential::User {
            token: token.into(),
            user_id,
            expires_at,
        })
    } else {
        None
    };
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = credential;
    Ok(data)
}

async fn still_valid(api: &AppContext, credential: Option<&Credential>) -> bool {
    match credential {
        Some(c) => c.still_valid(api).await,
        None => true,
    }
}

/// The socket's check of its credential after an account or access
/// change. It runs in a task of its own, beside the engine rather than in
/// its place: a subscription's field waiting for a database connection
/// inside the engine (which the loop does not poll while a branch awaits)
/// is handed the next free one and keeps it unused, so a check awaited in
/// the loop would wait on it for the pool's whole wait. On SQLite, one
/// connection, everything else waits as well.
#[derive(Default)]
pub(super) struct Recheck {
    running: Option<tokio::task::JoinHandle<bool>>,
    /// A change came while a check ran (which may have read from before
    /// it): check again when it ends.
    pub(super) again: bool,
}

impl Recheck {
    /// Starts a check of `credential`, or one more after the running one.
    pub(super) fn ask(&mut self, api: &AppContext, credential: Option<&Credential>) {
        if self.running.is_some() {
            self.again = true;
            return;
        }
        let (api, credential) = (api.clone(), credential.cloned());
        self.running = Some(tokio::spawn(async move {
            still_valid(&api, credential.as_ref()).await
        }));
    }

    pub(super) fn running(&self) -> bool {
        self.running.is_some()
    }

    /// The running check's verdict (guarded by [`Recheck::running`]); a
    /// check that failed to finish (it panicked) closes the socket: a
    /// credential that could not be checked is not kept on trust. (A
    /// database error is an answer: the socket stays, see
    /// `Credential::still_valid`.)
    pub(super) async fn answer(&mut self) -> bool {
        let Some(task) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let valid = task.await.unwrap_or(false);
        self.running = None;
        valid
    }
}

impl Drop for Recheck {
    fn drop(&mut self) {
        if let Some(task) = &self.running {
            task.abort();
        }
    }
}
