//! Keyset pagination on (created_at, id), oldest or newest first: stable
//! under inserts, one indexed range scan per page.

use base64::Engine;
use chrono::NaiveDateTime;

use crate::error::{AppError, AppResult};

/// Default page size.
pub const DEFAULT_FIRST: i64 = 20;
/// Largest page a client may ask for.
pub const MAX_FIRST: i64 = 100;

/// A position in a list ordered by (created_at, id).
#[derive(Debug, Clone)]
pub struct Cursor {
    /// Creation time of the last row seen.
    pub created_at: NaiveDateTime,
    /// Id of the last row seen.
    pub id: String,
}

/// The order of a list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, async_graphql::Enum)]
pub enum ListOrder {
    /// Oldest first (creation time, then id, ascending).
    #[default]
    OldestFirst,
    /// Newest first (creation time, then id, descending).
    NewestFirst,
}

/// Which page to read.
#[derive(Debug, Clone)]
pub struct PageArgs {
    /// Rows wanted.
    pub first: i64,
    /// Start after this row (in `order`).
    pub after: Option<Cursor>,
    /// Oldest or newest first.
    pub order: ListOrder,
}

impl PageArgs {
    /// Checks `first` (1..=100) and decodes `after`.
    pub fn new(first: Option<i32>, after: Option<&str>) -> AppResult<Self> {
        let first = i64::from(first.unwrap_or(DEFAULT_FIRST as i32));
        if !(1..=MAX_FIRST).contains(&first) {
            return Err(AppError::bad(format!(
                "first must be between 1 and {MAX_FIRST}"
            )));
        }
        let after = after.map(decode).transpose()?;
        Ok(PageArgs {
            first,
            after,
            order: ListOrder::OldestFirst,
        })
    }

    /// The same page in `order` (a cursor is a row, valid in either order).
    pub fn ordered(self, order: ListOrder) -> Self {
        PageArgs { order, ..self }
    }

    /// Whether the list runs newest first.
    pub fn newest_first(&self) -> bool {
        self.order == ListOrder::NewestFirst
    }
}

/// Encodes a cursor for a row.
pub fn encode(created_at: NaiveDateTime, id: &str) -> String {
    let raw = format!("{}|{id}", created_at.and_utc().timestamp_micros());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode(cursor: &str) -> AppResult<Cursor> {
    let bad = || AppError::bad("after is not a valid cursor");
    if cursor.len() > 200 {
        return Err(bad());
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once('|').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let created_at = chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(bad)?
        .naive_utc();
    crate::validate::time("after", created_at).map_err(|_| bad())?;
    // Every row id is a UUID: anything else is not one of our cursors.
    let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?.to_string();
    Ok(Cursor { created_at, id })
}

/// One page of rows and whether more follow.
#[derive(Debug)]
pub struct Page<T> {
    /// The rows.
    pub rows: Vec<T>,
    /// Whether rows follow the last one.
    pub has_next: bool,
}

impl<T> Page<T> {
    /// Splits a fetch of `first + 1` rows into a page.
    pub fn from_fetch(mut rows: Vec<T>, first: i64) -> Self {
        let has_next = rows.len() as i64 > first;
        rows.truncate(first as usize);
        Page { rows, has_next }
    }
}

/// Applies keyset filtering and ordering (as `$page.order` says) to a boxed
/// diesel query on a table with `created_at` and `id` columns, fetching one
/// extra row.
#[macro_export]
macro_rules! paginate {
    ($query:expr, $table:ident, $page:expr) => {
        $crate::paginate!($query, $table::created_at, $table::id, $page)
    };
    ($query:expr, $created:expr, $id:expr, $page:expr) => {{
        let mut q = $query;
        if $page.newest_first() {
            if let Some(c) = &$page.after {
                q = q.filter(
                    $created
                        .lt(c.created_at)
                        .or($created.eq(c.created_at).and($id.lt(c.id.clone()))),
                );
            }
            q.order(($created.desc(), $id.desc()))
                .limit($page.first + 1)
        } else {
            if let Some(c) = &$page.after {
                q = q.filter(
                    $created
                        .gt(c.created_at)
                        .or($created.eq(c.created_at).and($id.gt(c.id.clone()))),
                );
            }
            q.order(($created.asc(), $id.asc())).limit($page.first + 1)
        }
    }};
}
