//! The embedded SQLite plumbing the services' stores share (feature `sqlite`): one
//! database file per service replica, guarded by a `flock`, with one writer
//! connection and a small pool of read-only reader connections.
//!
//! [`SqliteDb::open`] takes an exclusive advisory lock (`flock`) on
//! `<database>.lock` (waiting up to [`LOCK_WAIT`] for a store dropped a moment ago
//! in this process to let go), opens the writer connection in WAL mode with
//! `synchronous=FULL` (a commit is on disk before it returns) and hands it to the
//! caller's initialisation (schema, migrations). Then:
//!
//! - [`SqliteDb::write`] runs a closure in a `BEGIN IMMEDIATE` transaction on the one
//!   writer connection (SQLite has one writer at a time anyway) and commits when it
//!   returns `Ok`;
//! - [`SqliteDb::read`] runs a closure in a read transaction (one snapshot for all its
//!   statements) on a pooled connection opened read-only. WAL lets readers run beside
//!   the writer: a long read does not hold up a write, nor a write a read. At most
//!   `max_readers` reads run at once; more wait for a connection rather than opening
//!   new ones (opening one costs more than a point select), and connections are kept
//!   open between reads.
//!
//! Every call runs on tokio's blocking pool. Errors are [`SqliteError`]s, which each
//! store turns into its own error type (`E: From<SqliteError>`), so a store's
//! closures return its own errors.
//!
//! The lock makes a second service on the same file refuse to start instead of
//! serving beside the first: two replicas on one SQLite file would each announce
//! only their own writes and cache what the other changes (the embedded stores serve
//! one replica; replicas share PostgreSQL). The kernel releases the lock when the
//! process ends, however it ends; the lock file stays, like SQLite's `-wal` and
//! `-shm`. Elsewhere than Unix the file is created but not locked.
//!
//! ```
//! use kaa_service::sqlite::{SqliteDb, SqliteError};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let db = SqliteDb::open(dir.path().join("notes.db"), 4, |conn| {
//!     conn.execute_batch("CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL)")
//!         .map_err(SqliteError::from)
//! })
//! .await?;
//! db.write(|tx| {
//!     tx.execute("INSERT INTO notes (text) VALUES ('hello')", [])
//!         .map_err(SqliteError::from)
//! })
//! .await?;
//! let n: i64 = db
//!     .read(|tx| {
//!         tx.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
//!             .map_err(SqliteError::from)
//!     })
//!     .await?;
//! assert_eq!(n, 1);
//! // One service per file.
//! let err = SqliteDb::open(dir.path().join("notes.db"), 4, |_| Ok::<_, SqliteError>(()))
//!     .await
//!     .unwrap_err();
//! assert!(matches!(err, SqliteError::InUse { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

/// How long opening waits for the replica lock before the file counts as taken.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How long a statement waits for a lock SQLite holds (another connection's
/// checkpoint, a writer outside this process) before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The default size of the reader pool.
pub const DEFAULT_MAX_READERS: usize = 8;

/// What went wrong with the database file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// Another store (in this process or another) holds the file's replica lock.
    #[error("the SQLite database {} is in use (another process holds {})", path.display(), lock.display())]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The lock file another store holds.
        lock: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("{}: {source}", lock.display())]
    Lock {
        /// The lock file.
        lock: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database is not in WAL mode and could not be switched to it.
    #[error("{}: could not switch to WAL (journal_mode={mode})", path.display())]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A connection's mutex was poisoned by a panic in an earlier call.
    #[error("{0} connection poisoned")]
    Poisoned(&'static str),
    /// The blocking task running the call failed (it panicked or was cancelled).
    #[error("store task failed: {0}")]
    Task(String),
}

/// The lock file of the database at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive advisory lock (`flock`) on `<database>.lock`, held while it lives
/// (see [the module docs](self)).
#[derive(Debug)]
pub struct ReplicaLock {
    _file: std::fs::File,
}

/// Takes the replica lock of the database at `path`, waiting up to [`LOCK_WAIT`]
/// for another holder to let go; [`SqliteError::InUse`] after that. Blocking.
pub fn lock_replica(path: &Path) -> Result<ReplicaLock, SqliteError> {
    let lock = lock_path(path);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
    {
        Ok(file) => file,
        Err(source) => return Err(SqliteError::Lock { lock, source }),
    };
    #[cfg(unix)]
    {
        // A store dropped in this process a moment ago may still be held by the
        // tasks of the server that used it (they end as their channels close):
        // wait a little before calling the file taken.
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(SqliteError::InUse {
                        path: path.to_path_buf(),
                        lock,
                    });
                }
                Err(e) => {
                    return Err(SqliteError::Lock {
                        lock,
                        source: std::io::Error::from(e),
                    });
                }
            }
        }
    }
    Ok(ReplicaLock { _file: file })
}

/// Opens the writer connection: creates the file if needed, WAL journal,
/// `synchronous=FULL`, [`BUSY_TIMEOUT`]. Blocking.
pub fn open_writer(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteError::NotWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

/// Opens a reader connection: read-only (a write through it fails with
/// `SQLITE_READONLY`), [`BUSY_TIMEOUT`]. The database must exist and be in WAL mode
/// (the writer made it so). Blocking.
pub fn open_reader(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// One database file: the replica lock, the writer connection and the reader pool
/// (see [the module docs](self)). Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Held for the database's lifetime: see [`ReplicaLock`].
    _lock: ReplicaLock,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    read_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.inner.path)
            .field("max_readers", &self.inner.max_readers)
            .finish_non_exhaustive()
    }
}

fn task_error(e: tokio::task::JoinError) -> SqliteError {
    SqliteError::Task(e.to_string())
}

impl SqliteDb {
    /// Takes the replica lock of `path` ([`SqliteError::InUse`] while another store
    /// holds it, after waiting up to [`LOCK_WAIT`]), opens the writer connection
    /// (creating the file if needed) and runs `init` on it (schema, migrations), then
    /// lets at most `max_readers` reads (at least 1) run at once.
    pub async fn open<E, F>(path: impl AsRef<Path>, max_readers: usize, init: F) -> Result<Self, E>
    where
        E: From<SqliteError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<(), E> + Send + 'static,
    {
        let path = path.as_ref().to_path_buf();
        let max_readers = max_readers.max(1);
        tokio::task::spawn_blocking(move || {
            let lock = lock_replica(&path)?;
            let mut writer = open_writer(&path)?;
            init(&mut writer)?;
            Ok(Self {
                inner: Arc::new(Inner {
                    path,
                    _lock: lock,
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                    max_readers,
                    read_slots: tokio::sync::Semaphore::new(max_readers),
                }),
            })
        })
        .await
        .map_err(|e| E::from(task_error(e)))?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The most reads that run at once.
    pub fn max_readers(&self) -> usize {
        self.inner.max_readers
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer connection and
    /// commits (synced to disk) when it returns `Ok`; an `Err` rolls back.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| SqliteError::Poisoned("writer"))?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(SqliteError::from)?;
            let value = f(&tx)?;
            tx.commit().map_err(SqliteError::from)?;
            Ok(value)
        })
        .await
        .map_err(|e| E::from(task_error(e)))?
    }

    /// Runs `f` in a read transaction (one snapshot for all its statements) on a
    /// pooled read-only connection, beside any write.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        // The semaphore is never closed: acquiring fails only if it were.
        let slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|e| SqliteError::Task(e.to_string()))?;
        let result = tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().ok().and_then(|mut pool| pool.pop());
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let result: Result<T, E> = (|| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Deferred)
                    .map_err(SqliteError::from)?;
                let value = f(&tx)?;
                tx.commit().map_err(SqliteError::from)?;
                Ok(value)
            })();
            if let Ok(mut pool) = inner.readers.lock()
                && pool.len() < inner.max_readers
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| E::from(task_error(e)))?;
        drop(slot);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Long enough never to be reached when the pool works; a hang without it.
    const GUARD: Duration = Duration::from_secs(30);

    async fn db(dir: &tempfile::TempDir, readers: usize) -> SqliteDb {
        SqliteDb::open(dir.path().join("t.db"), readers, |conn| {
            conn.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER NOT NULL)")
                .map_err(SqliteError::from)
        })
        .await
        .unwrap()
    }

    fn count(tx: &Transaction<'_>) -> Result<i64, SqliteError> {
        Ok(tx.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
    }

    /// A read that stays open until a write has committed: the write goes through
    /// beside it (on one shared connection it would wait for the read, which waits
    /// for it), and the read keeps the snapshot it started with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_does_not_block_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir, 2).await;
        db.write(|tx| Ok::<_, SqliteError>(tx.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .unwrap();
        let (reading_tx, reading) = mpsc::channel::<()>();
        let (written_tx, written) = mpsc::channel::<()>();
        let read = tokio::spawn({
            let db = db.clone();
            async move {
                db.read(move |tx| {
                    let before = count(tx)?;
                    reading_tx.send(()).unwrap();
                    let released = written.recv_timeout(GUARD).is_ok();
                    Ok::<_, SqliteError>((before, released, count(tx)?))
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || reading.recv_timeout(GUARD))
            .await
            .unwrap()
            .expect("the read started");
        db.write(|tx| Ok::<_, SqliteError>(tx.execute("INSERT INTO t VALUES (2)", [])?))
            .await
            .unwrap();
        written_tx.send(()).unwrap();
        let (before, released, after) = read.await.unwrap().unwrap();
        assert!(released, "the write committed while the read was open");
        assert_eq!((before, after), (1, 1), "one snapshot for the whole read");
        let now = db.read(count).await.unwrap();
        assert_eq!(now, 2);
    }

    /// Two reads that each wait for the other to have started: they can only both
    /// finish if they run at the same time, on two connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_at_the_same_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir, 2).await;
        let (a_tx, a_rx) = mpsc::channel::<()>();
        let (b_tx, b_rx) = mpsc::channel::<()>();
        let read = |db: SqliteDb, mine: mpsc::Sender<()>, theirs: mpsc::Receiver<()>| async move {
            db.read(move |tx| {
                count(tx)?;
                mine.send(()).unwrap();
                Ok::<_, SqliteError>(theirs.recv_timeout(GUARD).is_ok())
            })
            .await
        };
        let a = tokio::spawn(read(db.clone(), a_tx, b_rx));
        let b = tokio::spawn(read(db.clone(), b_tx, a_rx));
        assert!(a.await.unwrap().unwrap(), "read a saw read b running");
        assert!(b.await.unwrap().unwrap(), "read b saw read a running");
    }

    #[tokio::test]
    async fn readers_are_read_only_and_errors_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir, 1).await;
        let err = db
            .read(|tx| Ok::<_, SqliteError>(tx.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        // A failed write changes nothing.
        let err = db
            .write(|tx| {
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                Err::<(), _>(SqliteError::Task("stop".into()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, SqliteError::Task(_)), "{err}");
        assert_eq!(db.read(count).await.unwrap(), 0);
        assert_eq!(db.max_readers(), 1);
    }

    #[tokio::test]
    async fn one_store_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = db(&dir, 1).await;
        let err = SqliteDb::open(dir.path().join("t.db"), 1, |_| Ok::<_, SqliteError>(()))
            .await
            .unwrap_err();
        match err {
            SqliteError::InUse { path, lock } => {
                assert_eq!(path, dir.path().join("t.db"));
                assert_eq!(lock, dir.path().join("t.db.lock"));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        db(&dir, 1).await;
    }
}
