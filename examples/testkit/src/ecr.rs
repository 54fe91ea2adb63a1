//! Helpers shared by the ECR integration tests: store URLs for both backends, with the
//! live-service skip rule for PostgreSQL from `kaa_bus::test_support` (when PostgreSQL
//! is not reachable a test prints `SKIPPED: <test>: PostgreSQL not reachable at <url>`
//! and passes, unless `KAA_REQUIRE_SERVICES=1`, in which case it fails).

use std::time::Duration;

use kaa_bus::test_support::{POSTGRES, skip};

async fn admin_connect(url: &str) -> Option<tokio_postgres::Client> {
    let attempt = async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(client)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The server's admin URL (`KAA_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`), with `root` tried as the user when
/// `postgres` is refused; `None` after applying the skip rule.
async fn admin_url(test: &str) -> Option<(String, tokio_postgres::Client)> {
    let url = POSTGRES.require(test)?;
    let mut candidates = vec![url.clone()];
    if url.contains("://postgres@") {
        candidates.push(url.replacen("://postgres@", "://root@", 1));
    }
    for candidate in candidates {
        if let Some(client) = admin_connect(&candidate).await {
            return Some((candidate, client));
        }
    }
    skip(
        test,
        &format!("PostgreSQL not reachable at {url} (connection refused or login failed)"),
    );
    None
}

/// A fresh PostgreSQL database `ecr_test_<random>`, dropped (WITH FORCE) when this
/// value is dropped.
pub struct PgTestDb {
    /// The URL of the fresh database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgTestDb {
    /// Creates the database, or applies the skip rule and returns `None`.
    pub async fn create(test: &str) -> Option<Self> {
        let (admin_url, client) = admin_url(test).await?;
        let name = format!("ecr_test_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("admin URL has a database");
        Some(Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Some(client) = admin_connect(&admin_url).await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A SQLite database file in a temporary directory (removed on drop).
pub struct SqliteTestDb {
    /// `sqlite://<path>`.
    pub url: String,
    /// The file.
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SqliteTestDb {
    /// A fresh file.
    pub fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ecr.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            path,
            _dir: dir,
        }
    }
}

/// Generates, for every listed `async fn case(url: &str)`, one test per backend:
/// `sqlite::case` and `postgres::case` (the latter under the skip rule).
#[macro_export]
macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = $crate::ecr::SqliteTestDb::create();
                    super::$case(&db.url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = $crate::ecr::PgTestDb::create(
                        concat!("postgres::", stringify!($case)),
                    ).await else {
                        return;
                    };
                    super::$case(&db.url).await;
                }
            )*
        }
    };
}

/// An app version name the test knows to be valid.
pub fn app(s: &str) -> kaa_ecr::model::AppVersionName {
    kaa_ecr::model::AppVersionName::new(s).unwrap()
}

/// An endpoint ID the test knows to be valid.
pub fn ep(s: &str) -> kaa_ecr::model::EndpointId {
    kaa_ecr::model::EndpointId::new(s).unwrap()
}

/// A configuration name the test knows to be valid.
pub fn name(s: &str) -> kaa_ecr::model::ConfigName {
    kaa_ecr::model::ConfigName::new(s).unwrap()
}

/// The default configuration's scope of app version `a`.
pub fn default_scope(a: &str) -> kaa_ecr::model::Scope {
    kaa_ecr::model::Scope::Default {
        app_version: app(a),
    }
}

/// The scope of endpoint `e`'s override in app version `a`.
pub fn ep_scope(e: &str, a: &str) -> kaa_ecr::model::Scope {
    kaa_ecr::model::Scope::Endpoint {
        endpoint_id: ep(e),
        app_version: app(a),
    }
}
