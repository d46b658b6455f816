//! One error type for use cases and handlers. It renders both the REST JSON
//! error body and the GraphQL error `code`; internal details are logged once
//! with a request id and never sent to clients.

use async_graphql::ErrorExtensions;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use diesel::result::DatabaseErrorKind;
use httvps_wire::{ErrorBody, ErrorDetail};

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// The input is malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential was presented.
    #[error("authentication required")]
    Unauthenticated,
    /// The credential is valid but does not allow this.
    #[error("not allowed")]
    Forbidden,
    /// Not allowed, for a reason the caller may be told (`FORBIDDEN`, with
    /// the reason as its message): sign-up is closed, the account is
    /// disabled.
    #[error("{0}")]
    Refused(&'static str),
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with existing data (a duplicate, a state clash).
    #[error("{0}")]
    Conflict(String),
    /// A limit of the plan or of the service is reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// Too many attempts from this source or for this account: retry after
    /// the given number of seconds.
    #[error("too many attempts: retry in {retry_after_secs} s")]
    Throttled {
        /// Seconds until an attempt is allowed again.
        retry_after_secs: u64,
    },
    /// The database (or another dependency) cannot serve now: an outage.
    #[error("{0}")]
    Unavailable(String),
    /// No healthy node with room serves the region now: a decision, which
    /// gateways don't paper over with their outage cache.
    #[error("{0}")]
    NoNode(String),
    /// The device may not connect, for a stable reason.
    #[error("{}", .0.message())]
    DeviceRefused(httvps_wire::Reason),
    /// The request body is larger than the server accepts.
    #[error("the request body is too large")]
    TooLarge,
    /// The request body did not arrive within the body deadline.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// A bug or an unexpected failure; the text is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

/// What a transaction the database undid to break a deadlock, or could not
/// serialize, is answered with (a retry goes through).
const CONCURRENT_UPDATE: &str = "concurrent update, retry";

/// What a write that names a row deleted meanwhile (or deletes one still
/// named) is answered with.
const MISSING_REFERENCE: &str = "refers to a missing record or is still referenced";

impl AppError {
    /// Whether this is the outcome of a race with another transaction (a
    /// deadlock broken, a serialization failure, a row named by the write
    /// deleted meanwhile): the same work tried again may go through.
    pub fn is_race(&self) -> bool {
        match self {
            AppError::Unavailable(m) => m == CONCURRENT_UPDATE,
            AppError::Conflict(m) => m == MISSING_REFERENCE,
            _ => false,
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadRequest(_) => "BAD_REQUEST",
            AppError::Unauthenticated => "UNAUTHENTICATED",
            AppError::Forbidden | AppError::Refused(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::Conflict(_) => "CONFLICT",
            AppError::LimitExceeded(_) | AppError::Throttled { .. } => "LIMIT_EXCEEDED",
            AppError::Unavailable(_) => httvps_wire::Unavailable::DatabaseUnavailable.code(),
            AppError::NoNode(_) => httvps_wire::Unavailable::NoNodeAvailable.code(),
            AppError::DeviceRefused(_) => "DEVICE_REFUSED",
            AppError::TooLarge => "PAYLOAD_TOO_LARGE",
            AppError::BodyTimeout => "REQUEST_TIMEOUT",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::Refused(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::LimitExceeded(_) => StatusCode::CONFLICT,
            AppError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) | AppError::NoNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::DeviceRefused(_) => StatusCode::FORBIDDEN,
            AppError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a diesel error, saying what a unique violation means here.
    pub fn on_conflict(message: &'static str) -> impl Fn(diesel::result::Error) -> AppError {
        move |e| match AppError::from(e) {
            // A missing or still-referenced row is not the conflict the
            // caller names (a duplicate): it keeps its own message.
            AppError::Conflict(m) if m != MISSING_REFERENCE => AppError::Conflict(message.into()),
            other => other,
        }
    }

    /// `missing` in place of a missing reference: for a write whose one
    /// reference is the row the caller named (deleted meanwhile), the same
    /// answer as had it been gone before.
    pub fn or_missing(self, missing: AppError) -> AppError {
        match self {
            AppError::Conflict(m) if m == MISSING_REFERENCE => missing,
            other => other,
        }
    }

    /// Shorthand for a bad-request error.
    pub fn bad(msg: impl Into<String>) -> Self {
        AppError::BadRequest(msg.into())
    }

    /// Logs internal details once and returns the request id to show.
    fn log_internal(&self) -> Option<String> {
        match self {
            AppError::Internal(detail) => {
                let id = uuid::Uuid::new_v4().to_string();
                tracing::error!(request.id = %id, error = %detail, "internal error");
                Some(id)
            }
            _ => None,
        }
    }

    /// Converts into a GraphQL error carrying `extensions.code` (and
    /// `extensions.requestId` for internal errors).
    pub fn into_graphql(self) -> async_graphql::Error {
        let request_id = self.log_internal();
        let mut err = async_graphql::Error::new(self.to_string());
        err = err.extend_with(|_, ext| {
            ext.set("code", self.code());
            if let Some(id) = &request_id {
                ext.set("requestId", id.as_str());
            }
            if let AppError::Throttled { retry_after_secs } = &self {
                ext.set("retryAfter", *retry_after_secs);
            }
        });
        err
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        match e {
            E::NotFound => AppError::NotFound("record"),
            E::DatabaseError(kind, info) => match kind {
                DatabaseErrorKind::UniqueViolation => AppError::Conflict("already exists".into()),
                DatabaseErrorKind::ForeignKeyViolation => {
                    AppError::Conflict(MISSING_REFERENCE.into())
                }
                DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation => {
                    AppError::BadRequest("a value is out of its allowed range".into())
                }
                DatabaseErrorKind::SerializationFailure => {
                    AppError::Unavailable(CONCURRENT_UPDATE.into())
                }
                // The connection went (closed, reset, never answered):
                // diesel-async says so for any error without a SQLSTATE.
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                    AppError::Unavailable("database unavailable".into())
                }
                _ => {
                    // SQLite reports CHECK, foreign-key and busy errors as
                    // "unknown": classify by text.
                    let msg = info.message();
                    if msg.contains("CHECK constraint failed")
                        || msg.contains("NOT NULL constraint failed")
                    {
                        AppError::BadRequest("a value is out of its allowed range".into())
                    } else if msg.contains("FOREIGN KEY constraint failed") {
                        // A row still referenced (a delete RESTRICTed) or
                        // a reference to none.
                        AppError::Conflict(MISSING_REFERENCE.into())
                    } else if msg.contains("database is locked") {
                        AppError::Unavailable("database busy, retry".into())
                    } else if connection_lost(msg) {
                        AppError::Unavailable("database unavailable".into())
                    } else if msg.contains("deadlock detected") {
                        // PostgreSQL chose this transaction to undo; it
                        // left nothing behind, and a retry goes through.
                        AppError::Unavailable(CONCURRENT_UPDATE.into())
                    } else {
                        AppError::Internal(format!("database: {msg}"))
                    }
                }
            },
            // A transaction whose connection went cannot be finished or
            // undone on it: the pool drops the connection, a retry goes
            // through.
            E::BrokenTransactionManager => AppError::Unavailable("database unavailable".into()),
            E::RollbackErrorOnCommit { commit_error, .. } => AppError::from(*commit_error),
            other => AppError::Internal(format!("database: {other}")),
        }
    }
}

/// Whether PostgreSQL's `msg` says it is ending the connection or cannot
/// serve it now (SQLSTATE class 57P: an administrator's or a crash's
/// shutdown, a server starting up or in recovery; the code itself does
/// not reach here, only the text).
fn connection_lost(msg: &str) -> bool {
    msg.starts_with("terminating connection")
        || msg.starts_with("the database system is")
        || msg.contains("server closed the connection")
}

impl From<deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>> for AppError {
    fn from(e: deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>) -> Self {
        tracing::warn!(error = %e, "database pool");
        AppError::Unavailable("database unavailable".into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let request_id = self.log_internal();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                reason: match &self {
                    AppError::DeviceRefused(r) => Some(r.as_str().to_owned()),
                    AppError::Unavailable(_) => Some(
                        httvps_wire::Unavailable::DatabaseUnavailable
                            .as_str()
                            .to_owned(),
                    ),
                    AppError::NoNode(_) => Some(
                        httvps_wire::Unavailable::NoNodeAvailable
                            .as_str()
                            .to_owned(),
                    ),
                    _ => None,
                },
                request_id,
            },
        };
        let mut res = (self.status(), axum::Json(body)).into_response();
        if let AppError::Throttled { retry_after_secs } = &self {
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after_secs),
            );
        }
        res
    }
}

/// Result alias for use cases.
pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn from_db(kind: DatabaseErrorKind, message: &str) -> AppError {
        diesel::result::Error::DatabaseError(kind, Box::new(message.to_owned())).into()
    }

    #[test]
    fn races_are_told_from_faults() {
        let deadlock = from_db(DatabaseErrorKind::Unknown, "deadlock detected");
        assert!(deadlock.is_race());
        assert_eq!(deadlock.status().as_u16(), 503, "retryable, not INTERNAL");
        assert!(from_db(DatabaseErrorKind::SerializationFailure, "x").is_race());
        assert!(from_db(DatabaseErrorKind::ForeignKeyViolation, "x").is_race());
        assert!(!from_db(DatabaseErrorKind::UniqueViolation, "x").is_race());
        assert!(!from_db(DatabaseErrorKind::Unknown, "disk full").is_race());
        // A connection lost, or ended by the server, is an outage (503),
        // not a failure of ours.
        for (kind, msg) in [
            (DatabaseErrorKind::UnableToSendCommand, "connection closed"),
            (
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            (
                DatabaseErrorKind::Unknown,
                "the database system is shutting down",
            ),
            (DatabaseErrorKind::ClosedConnection, "x"),
        ] {
            assert_eq!(from_db(kind, msg).code(), "UNAVAILABLE", "{msg}");
        }
        assert!(!AppError::Unavailable("database unavailable".into()).is_race());
        assert!(matches!(
            from_db(DatabaseErrorKind::ForeignKeyViolation, "x")
                .or_missing(AppError::NotFound("region")),
            AppError::NotFound("region")
        ));
        assert!(matches!(
            from_db(DatabaseErrorKind::UniqueViolation, "x")
                .or_missing(AppError::NotFound("region")),
            AppError::Conflict(_)
        ));
        // SQLite says it in words.
        assert!(from_db(DatabaseErrorKind::Unknown, "FOREIGN KEY constraint failed").is_race());
    }

    #[test]
    fn a_conflicts_message_names_duplicates_only() {
        let named = AppError::on_conflict("a node with this name exists");
        let db = |kind, message: &str| {
            diesel::result::Error::DatabaseError(kind, Box::new(message.to_owned()))
        };
        let e = named(db(DatabaseErrorKind::UniqueViolation, "duplicate key"));
        assert!(
            matches!(&e, AppError::Conflict(m) if m == "a node with this name exists"),
            "{e:?}"
        );
        // A region deleted under a registration is not "name exists".
        for kind in [
            DatabaseErrorKind::ForeignKeyViolation,
            DatabaseErrorKind::Unknown,
        ] {
            let e = named(db(kind, "FOREIGN KEY constraint failed"));
            assert!(
                matches!(&e, AppError::Conflict(m) if m == MISSING_REFERENCE),
                "{e:?}"
            );
        }
    }
}
