//! The durable ledger: one SQLite file in WAL mode with `synchronous=FULL`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::counters::{Counters, COUNTER_MAX};
use super::ledger::{retention_millis, Bucket, Ledger, LedgerEntry, LedgerError};
use super::window::Window;

/// The ledger file used when `--ledger` is not given, relative to the working directory.
pub const DEFAULT_LEDGER_PATH: &str = "modelgate-ledger.sqlite3";

/// How long a write waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks a SQLite file as a modelgate ledger (`PRAGMA application_id`), so that another
/// application's database is rejected instead of written to. The bytes spell `MGLD`.
const APPLICATION_ID: i32 = 0x4D47_4C44;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    scope TEXT NOT NULL,
    window TEXT NOT NULL,
    start_millis INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_micro_usd INTEGER NOT NULL,
    PRIMARY KEY (scope, window, start_millis)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_last_use (
    key TEXT PRIMARY KEY NOT NULL,
    last_used_millis INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Adds to a counter row, saturating each counter at `COUNTER_MAX` (`?8`).
const UPSERT: &str = "
INSERT INTO usage (scope, window, start_millis, requests, input_tokens, output_tokens, cost_micro_usd)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (scope, window, start_millis) DO UPDATE SET
    requests = min(requests + excluded.requests, ?8),
    input_tokens = min(input_tokens + excluded.input_tokens, ?8),
    output_tokens = min(output_tokens + excluded.output_tokens, ?8),
    cost_micro_usd = min(cost_micro_usd + excluded.cost_micro_usd, ?8)
";

/// A ledger in one SQLite file.
///
/// Every [`Ledger::add`] is one transaction, committed with the WAL journal and
/// `synchronous=FULL`, so usage that `add` returned for survives a process crash and a power
/// loss (as far as the disk honours fsync).
#[derive(Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl SqliteLedger {
    /// Opens the ledger at `path`, creating it when it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let open_error = |error: rusqlite::Error| LedgerError::Open {
            path: path.clone(),
            message: error.to_string(),
        };
        let connection = Connection::open(&path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;

        // A new file has no tables and application id 0; anything else must carry our id.
        let application_id: i32 = connection
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(open_error)?;
        let table_count: i64 = connection
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(open_error)?;
        if application_id != APPLICATION_ID && (application_id != 0 || table_count > 0) {
            return Err(LedgerError::Open {
                path,
                message: "the file is an SQLite database, but not a modelgate ledger".to_string(),
            });
        }

        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        // The id and the tables are written in one transaction, so that a crash cannot leave
        // tables without the id, which the check above would then reject.
        connection
            .execute_batch(&format!(
                "BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID}; {SCHEMA} COMMIT;"
            ))
            .map_err(open_error)?;
        Ok(Self {
            path,
            connection: Mutex::new(connection),
        })
    }

    /// Returns the file the ledger is stored in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn storage_error(error: rusqlite::Error) -> LedgerError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            LedgerError::Locked(error.to_string())
        }
        _ => LedgerError::Storage(error.to_string()),
    }
}

fn to_sql(value: u64) -> i64 {
    // INVARIANT: counters are bounded by COUNTER_MAX, far below i64::MAX.
    i64::try_from(value.min(COUNTER_MAX)).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    // A negative value can only come from editing the file by hand; count it as zero.
    u64::try_from(value).unwrap_or(0).min(COUNTER_MAX)
}

fn counters_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Counters> {
    Ok(Counters {
        requests: from_sql(row.get(first)?),
        input_tokens: from_sql(row.get(first + 1)?),
        output_tokens: from_sql(row.get(first + 2)?),
        cost_micro_usd: from_sql(row.get(first + 3)?),
    })
}

impl Ledger for SqliteLedger {
    fn read(&self, bucket: &Bucket) -> Result<Counters, LedgerError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT requests, input_tokens, output_tokens, cost_micro_usd FROM usage
                 WHERE scope = ?1 AND window = ?2 AND start_millis = ?3",
            )
            .map_err(storage_error)?;
        let counters = statement
            .query_row(
                params![bucket.scope, bucket.window.name(), bucket.start],
                |row| counters_from_row(row, 0),
            )
            .optional()
            .map_err(storage_error)?;
        Ok(counters.unwrap_or_default())
    }

    fn add(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage_error)?;
        {
            let mut upsert = transaction.prepare_cached(UPSERT).map_err(storage_error)?;
            for scope in &entry.scopes {
                for window in Window::ALL {
                    upsert
                        .execute(params![
                            scope,
                            window.name(),
                            window.start(entry.at_millis),
                            to_sql(entry.usage.requests),
                            to_sql(entry.usage.input_tokens),
                            to_sql(entry.usage.output_tokens),
                            to_sql(entry.usage.cost_micro_usd),
                            to_sql(COUNTER_MAX),
                        ])
                        .map_err(storage_error)?;
                }
            }
            if let Some(key) = &entry.key {
                transaction
                    .prepare_cached(
                        "INSERT INTO key_last_use (key, last_used_millis) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET
                             last_used_millis = max(last_used_millis, excluded.last_used_millis)",
                    )
                    .and_then(|mut statement| statement.execute(params![key, entry.at_millis]))
                    .map_err(storage_error)?;
            }
        }
        // Dropping the transaction on an error above rolls it back.
        transaction.commit().map_err(storage_error)
    }

    fn current(&self, now_millis: i64) -> Result<Vec<(Bucket, Counters)>, LedgerError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT scope, window, start_millis, requests, input_tokens, output_tokens,
                        cost_micro_usd
                 FROM usage WHERE window = ?1 AND start_millis = ?2 ORDER BY scope",
            )
            .map_err(storage_error)?;
        let mut found = Vec::new();
        for window in Window::ALL {
            let rows = statement
                .query_map(params![window.name(), window.start(now_millis)], |row| {
                    Ok((
                        Bucket {
                            scope: row.get(0)?,
                            window,
                            start: row.get(2)?,
                        },
                        counters_from_row(row, 3)?,
                    ))
                })
                .map_err(storage_error)?;
            for row in rows {
                found.push(row.map_err(storage_error)?);
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    fn last_used(&self) -> Result<HashMap<String, i64>, LedgerError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT key, last_used_millis FROM key_last_use")
            .map_err(storage_error)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(storage_error)?;
        let mut found = HashMap::new();
        for row in rows {
            let (key, millis) = row.map_err(storage_error)?;
            found.insert(key, millis);
        }
        Ok(found)
    }

    fn prune(&self, now_millis: i64) -> Result<u64, LedgerError> {
        let mut connection = self.lock();
        let transaction = connection.transaction().map_err(storage_error)?;
        let mut deleted = 0_u64;
        for window in Window::ALL {
            // A window is deleted once it ended more than its retention ago. Window ends are
            // not a fixed offset from starts for months, so compare on the start of the
            // window that contained the cutoff.
            let cutoff = window.start(now_millis.saturating_sub(retention_millis(window)));
            let count = transaction
                .execute(
                    "DELETE FROM usage WHERE window = ?1 AND start_millis < ?2",
                    params![window.name(), cutoff],
                )
                .map_err(storage_error)?;
            deleted += u64::try_from(count).unwrap_or(0);
        }
        transaction.commit().map_err(storage_error)?;
        Ok(deleted)
    }
}
