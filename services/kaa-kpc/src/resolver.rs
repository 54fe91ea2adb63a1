//! Endpoint token resolution: from the token a device puts in its topics to the
//! endpoint ID that extensions (CMX) and repositories (ECR) know it by.
//!
//! KPC asks an [`EndpointTokenResolver`] once per session and token (the first
//! time a session uses a token) and keeps the answer for the session's lifetime.
//! [`TokenTable`], a table from the configuration (`kpc.endpoint-tokens`), is the
//! implementation this crate ships.
//!
//! # 16/ECAP
//!
//! [`EcapResolver`] asks a 16/ECAP provider (an endpoint register, `kaa-epr`):
//! it sends `EndpointTokenValidationRequest { correlationId, timestamp, timeout,
//! appName, token }` to `kaa.v1.service.<provider>.ecap.ep-token-request` (a
//! request with a fresh inbox as `replyTo`) and maps the answer:
//!
//! | 16/ECAP answer | [`ResolveError`] / result | 1/KP status for the device |
//! | --- | --- | --- |
//! | `statusCode` 2xx with an `endpointId` | `Ok(ResolvedEndpoint)` | — |
//! | 404 or 401 (unknown, revoked), or no `endpointId` | [`ResolveError::UnknownToken`] | 401 |
//! | 403 (suspended, another application) | [`ResolveError::Refused`] | 403 |
//! | timeout, no responders, other statuses | [`ResolveError::Unavailable`] | 503 (the device retries) |
//!
//! `appName` is the application of the topic's app version
//! (`kpc.token-validation.app-names`, default: the app version name itself), so
//! a token is valid only under its endpoint's app version unless the provider and
//! KPC both map several versions to one application. Tokens in
//! `kpc.endpoint-tokens` are resolved by the table first.
//!
//! **Development mode with a register** (`kpc.accept-any-token: true` beside
//! `kpc.token-validation`, as the all-in-one `kaa-stack` runs;
//! [`EcapResolver::with_unknown_tokens_as_endpoint_ids`]): a token the provider
//! does not know (404) is its own endpoint ID, so devices start without
//! provisioning, while provisioned tokens resolve to their endpoints and a
//! revoked (401) or suspended (403) token stays refused. Like
//! `accept-any-token` alone, it lets any device claim any endpoint ID that is
//! not also a provisioned token: development only. Such answers are not cached
//! (a token provisioned later takes effect at the next session).
//!
//! Valid answers are cached (at most `max-entries`, oldest out first, each for
//! `ttl`); a 16/ECAP `endpoint.token.revoked` event from the provider drops the
//! endpoint's answers at once ([`EcapResolver::endpoint_revoked`]), and KPC
//! takes the endpoint from the session using it (see the crate docs).
//!
//! KPC takes any `Arc<dyn EndpointTokenResolver>`
//! ([`KpcServer::bind_with_resolver`](super::KpcServer::bind_with_resolver)).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kaa_bus::{Bus, BusError};
use kaa_ism::avro::{Decode, Encode};

use super::config::TokenEntry;

/// What a token resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvedEndpoint {
    /// The endpoint ID (a valid 3/ISM subject token).
    pub endpoint_id: String,
}

impl ResolvedEndpoint {
    /// An endpoint ID.
    pub fn new(endpoint_id: impl Into<String>) -> Self {
        Self {
            endpoint_id: endpoint_id.into(),
        }
    }
}

/// Why a token did not resolve. Each case maps to the 1/KP status code the
/// device gets ([`ResolveError::status_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No endpoint has this token: 401.
    #[error("unknown endpoint token")]
    UnknownToken,
    /// The token exists but is not valid for the app version in the topic: 403.
    #[error("the endpoint token is not valid for app version {app_version:?}")]
    WrongAppVersion {
        /// The app version in the topic.
        app_version: String,
    },
    /// The provider refused the token (suspended, or valid for another
    /// application): 403.
    #[error("endpoint token refused: {reason}")]
    Refused {
        /// The provider's reason phrase.
        reason: String,
    },
    /// The resolver cannot answer now (provider down, timeout): 503.
    #[error("endpoint token resolution is unavailable: {0}")]
    Unavailable(String),
}

impl ResolveError {
    /// The 1/KP status code for the device: 401, 403 or 503.
    pub fn status_code(&self) -> i32 {
        match self {
            ResolveError::UnknownToken => 401,
            ResolveError::WrongAppVersion { .. } | ResolveError::Refused { .. } => 403,
            ResolveError::Unavailable(_) => 503,
        }
    }
}

/// Resolves endpoint tokens to endpoint IDs (16/ECAP in Kaa; see the
/// [module docs](self) for how a provider plugs in).
#[async_trait]
pub trait EndpointTokenResolver: Send + Sync + fmt::Debug {
    /// The endpoint that `endpoint_token` identifies, for a device that uses it
    /// under `app_version_name`.
    async fn resolve(
        &self,
        app_version_name: &str,
        endpoint_token: &str,
    ) -> Result<ResolvedEndpoint, ResolveError>;
}

/// The token table from the configuration (`kpc.endpoint-tokens`), optionally
/// accepting any token as its own endpoint ID (`kpc.accept-any-token`).
///
/// ```
/// use kaa_kpc::config::TokenEntry;
/// use kaa_kpc::resolver::{EndpointTokenResolver, ResolveError, TokenTable};
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let table = TokenTable::new(
///     [
///         ("tok-1".to_owned(), TokenEntry::EndpointId("ep-1".into())),
///         ("tok-2".to_owned(), TokenEntry::Detailed { endpoint_id: "ep-2".into(), app_version: Some("v2".into()) }),
///     ],
///     false,
/// );
/// assert_eq!(table.resolve("v1", "tok-1").await?.endpoint_id, "ep-1");
/// assert_eq!(table.resolve("v1", "tok-2").await.unwrap_err().status_code(), 403);
/// assert_eq!(table.resolve("v1", "nobody").await, Err(ResolveError::UnknownToken));
/// # Ok::<(), ResolveError>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct TokenTable {
    entries: HashMap<String, TokenEntry>,
    accept_any: bool,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are credentials of a kind: never print them.
        f.debug_struct("TokenTable")
            .field("tokens", &self.entries.len())
            .field("accept_any", &self.accept_any)
            .finish()
    }
}

impl TokenTable {
    /// A table of `(token, entry)` pairs; `accept_any`: unknown tokens resolve to
    /// themselves.
    pub fn new(entries: impl IntoIterator<Item = (String, TokenEntry)>, accept_any: bool) -> Self {
        Self {
            entries: entries.into_iter().collect(),
            accept_any,
        }
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the table holds `token`.
    pub fn contains(&self, token: &str) -> bool {
        self.entries.contains_key(token)
    }
}

#[async_trait]
impl EndpointTokenResolver for TokenTable {
    async fn resolve(
        &self,
        app_version_name: &str,
        endpoint_token: &str,
    ) -> Result<ResolvedEndpoint, ResolveError> {
        match self.entries.get(endpoint_token) {
            Some(entry) => match entry.app_version() {
                Some(v) if v != app_version_name => Err(ResolveError::WrongAppVersion {
                    app_version: app_version_name.to_owned(),
                }),
                _ => Ok(ResolvedEndpoint::new(entry.endpoint_id())),
            },
            None if self.accept_any => Ok(ResolvedEndpoint::new(endpoint_token)),
            None => Err(ResolveError::UnknownToken),
        }
    }
}

/// A cached valid answer.
#[derive(Debug)]
struct CacheEntry {
    endpoint_id: String,
    at: Instant,
}

/// Valid answers, bounded: at most `max` entries, the oldest evicted first.
#[derive(Debug, Default)]
struct Cache {
    /// (appName, token) → answer.
    map: HashMap<(String, String), CacheEntry>,
    /// Insertion order, for eviction (may hold keys already gone).
    order: VecDeque<(String, String)>,
}

/// Validates endpoint tokens with a 16/ECAP provider (see the [module docs](self)).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use kaa_kpc::config::TokenEntry;
/// use kaa_kpc::resolver::{EcapResolver, EndpointTokenResolver, ResolveError, TokenTable};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// // No provider on this bus: the device gets 503 and retries.
/// let bus = Arc::new(kaa_bus::MemoryBus::new());
/// let resolver = EcapResolver::new(bus, "epr", Duration::from_millis(100))
///     .with_table(TokenTable::new([("static-tok".to_owned(), TokenEntry::EndpointId("ep-1".into()))], false));
/// assert_eq!(resolver.resolve("v1", "static-tok").await?.endpoint_id, "ep-1");
/// assert_eq!(resolver.resolve("v1", "other").await.unwrap_err().status_code(), 503);
/// # Ok::<(), ResolveError>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EcapResolver {
    bus: Arc<dyn Bus>,
    provider: String,
    subject: String,
    timeout: Duration,
    app_names: HashMap<String, String>,
    table: TokenTable,
    max_entries: usize,
    ttl: Duration,
    cache: Mutex<Cache>,
    unknown_as_own_id: bool,
}

impl fmt::Debug for EcapResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcapResolver")
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .field("table", &self.table)
            .field("max_entries", &self.max_entries)
            .field("ttl", &self.ttl)
            .field("unknown_as_own_id", &self.unknown_as_own_id)
            .finish_non_exhaustive()
    }
}

impl EcapResolver {
    /// A resolver asking `provider` (its service instance name) over `bus`, each
    /// request waiting at most `timeout`. Caches up to 100,000 valid answers for
    /// 5 minutes; no table, every app version its own application.
    pub fn new(bus: Arc<dyn Bus>, provider: &str, timeout: Duration) -> Self {
        let subject = kaa_ecap::Exchange::EndpointToken
            .request_subject(provider)
            .map(|s| s.to_string())
            .unwrap_or_default();
        Self {
            bus,
            provider: provider.to_owned(),
            subject,
            timeout,
            app_names: HashMap::new(),
            table: TokenTable::default(),
            max_entries: 100_000,
            ttl: Duration::from_secs(300),
            cache: Mutex::new(Cache::default()),
            unknown_as_own_id: false,
        }
    }

    /// From `kpc.token-validation`, with `table` (`kpc.endpoint-tokens`) asked
    /// first; `accept_any_token` (`kpc.accept-any-token`): see
    /// [`with_unknown_tokens_as_endpoint_ids`](Self::with_unknown_tokens_as_endpoint_ids).
    pub fn from_config(
        bus: Arc<dyn Bus>,
        config: &super::config::TokenValidationSection,
        table: TokenTable,
        accept_any_token: bool,
    ) -> Self {
        Self::new(bus, &config.provider, config.timeout)
            .with_table(table)
            .with_app_names(config.app_names.iter().map(|(k, v)| (k.clone(), v.clone())))
            .with_cache(config.cache.max_entries, config.cache.ttl)
            .with_unknown_tokens_as_endpoint_ids(accept_any_token)
    }

    /// Development mode: a token the provider answers 404 for (it does not know
    /// it) resolves to an endpoint ID equal to the token, when the token is a
    /// valid 3/ISM subject token; revoked (401) and refused (403) tokens stay
    /// refused, and an unreachable provider is still 503. Not cached. See the
    /// [module docs](self).
    pub fn with_unknown_tokens_as_endpoint_ids(mut self, on: bool) -> Self {
        self.unknown_as_own_id = on;
        self
    }

    /// Tokens in `table` resolve there, without asking the provider.
    pub fn with_table(mut self, table: TokenTable) -> Self {
        self.table = table;
        self
    }

    /// App version name → 16/ECAP `appName`.
    pub fn with_app_names(mut self, names: impl IntoIterator<Item = (String, String)>) -> Self {
        self.app_names = names.into_iter().collect();
        self
    }

    /// At most `max_entries` valid answers (0: none), each reused for `ttl`.
    pub fn with_cache(mut self, max_entries: usize, ttl: Duration) -> Self {
        self.max_entries = max_entries;
        self.ttl = ttl;
        self
    }

    /// The provider's service instance name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How many answers are cached.
    pub fn cached(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A revocation: forgets every cached answer for `endpoint_id`.
    pub fn endpoint_revoked(&self, endpoint_id: &str) {
        self.lock().map.retain(|_, e| e.endpoint_id != endpoint_id);
    }

    fn app_name<'a>(&'a self, app_version: &'a str) -> &'a str {
        self.app_names
            .get(app_version)
            .map_or(app_version, String::as_str)
    }

    fn cache_get(&self, key: &(String, String)) -> Option<String> {
        if self.max_entries == 0 {
            return None;
        }
        let mut cache = self.lock();
        match cache.map.get(key) {
            Some(e) if e.at.elapsed() < self.ttl => Some(e.endpoint_id.clone()),
            Some(_) => {
                cache.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn cache_put(&self, key: (String, String), endpoint_id: &str) {
        if self.max_entries == 0 {
            return;
        }
        let mut cache = self.lock();
        while cache.map.len() >= self.max_entries {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            cache.map.remove(&oldest);
        }
        if cache.order.len() > self.max_entries.saturating_mul(2) {
            let Cache { map, order } = &mut *cache;
            order.retain(|k| map.contains_key(k));
        }
        cache.order.push_back(key.clone());
        cache.map.insert(
            key,
            CacheEntry {
                endpoint_id: endpoint_id.to_owned(),
                at: Instant::now(),
            },
        );
    }

    /// Asks the provider: `Ok(None)` when it does not know the token (404).
    async fn ask(
        &self,
        app_name: &str,
        token: &str,
    ) -> Result<Option<ResolvedEndpoint>, ResolveError> {
        let request = kaa_ecap::EndpointTokenValidationRequest {
            correlation_id: uuid::Uuid::new_v4().to_string().into(),
            timestamp: kaa_service::now().0,
            timeout: i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX),
            app_name: app_name.into(),
            token: token.into(),
        };
        let reply = self
            .bus
            .request(&self.subject, Bytes::from(request.to_vec()), self.timeout)
            .await
            .map_err(|e| match e {
                BusError::Timeout { .. } | BusError::NoResponders { .. } => {
                    ResolveError::Unavailable(format!("16/ECAP provider {}: {e}", self.provider))
                }
                other => ResolveError::Unavailable(other.to_string()),
            })?;
        let response = kaa_ecap::EndpointTokenValidationResponse::decode(&reply.payload)
            .map_err(|e| ResolveError::Unavailable(format!("16/ECAP response: {e}")))?;
        if response.correlation_id != request.correlation_id {
            return Err(ResolveError::Unavailable(
                "16/ECAP response for another request".into(),
            ));
        }
        let reason = || {
            response
                .reason_phrase
                .as_deref()
                .unwrap_or("refused by the provider")
                .to_owned()
        };
        match response.status_code {
            200..=299 => match response.endpoint_id.as_deref() {
                Some(id) if kaa_ism::subject::validate_token(id, "endpointId").is_ok() => {
                    Ok(Some(ResolvedEndpoint::new(id)))
                }
                Some(_) => Err(ResolveError::Unavailable(
                    "16/ECAP provider answered an endpoint ID that is not a subject token".into(),
                )),
                None => Err(ResolveError::UnknownToken),
            },
            404 => Ok(None),
            401 => Err(ResolveError::UnknownToken),
            403 => Err(ResolveError::Refused { reason: reason() }),
            status => Err(ResolveError::Unavailable(format!(
                "16/ECAP provider answered {status}: {}",
                reason()
            ))),
        }
    }
}

#[async_trait]
impl EndpointTokenResolver for EcapResolver {
    async fn resolve(
        &self,
        app_version_name: &str,
        endpoint_token: &str,
    ) -> Result<ResolvedEndpoint, ResolveError> {
        if self.table.contains(endpoint_token) {
            return self.table.resolve(app_version_name, endpoint_token).await;
        }
        let app_name = self.app_name(app_version_name);
        let key = (app_name.to_owned(), endpoint_token.to_owned());
        if let Some(endpoint_id) = self.cache_get(&key) {
            return Ok(ResolvedEndpoint::new(endpoint_id));
        }
        match self.ask(app_name, endpoint_token).await? {
            Some(resolved) => {
                self.cache_put(key, &resolved.endpoint_id);
                Ok(resolved)
            }
            None if self.unknown_as_own_id
                && kaa_ism::subject::validate_token(endpoint_token, "endpointId").is_ok() =>
            {
                Ok(ResolvedEndpoint::new(endpoint_token))
            }
            None => Err(ResolveError::UnknownToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_any_and_debug_hides_tokens() {
        let t = TokenTable::new(
            [("secret-tok".to_owned(), TokenEntry::EndpointId("ep".into()))],
            true,
        );
        assert_eq!(t.resolve("v", "other").await.unwrap().endpoint_id, "other");
        assert_eq!(
            t.resolve("v", "secret-tok").await.unwrap().endpoint_id,
            "ep"
        );
        assert!(!format!("{t:?}").contains("secret-tok"));
        assert_eq!(ResolveError::Unavailable("x".into()).status_code(), 503);
        assert_eq!(ResolveError::UnknownToken.status_code(), 401);
    }

    /// A fake 16/ECAP provider on `bus`: answers by token, counts requests.
    async fn provider(
        bus: Arc<kaa_bus::MemoryBus>,
        answers: HashMap<&'static str, (i32, Option<&'static str>)>,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        use futures::StreamExt;
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subject = kaa_ecap::Exchange::EndpointToken
            .request_subject("epr")
            .unwrap()
            .to_string();
        let mut sub = bus.subscribe(&subject, Some("epr")).await.unwrap();
        let counter = Arc::clone(&asked);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let req = kaa_ecap::EndpointTokenValidationRequest::decode(&m.payload).unwrap();
                let key = format!("{}/{}", req.app_name, req.token);
                let (status, ep) = answers.get(key.as_str()).copied().unwrap_or((404, None));
                let resp = kaa_ecap::EndpointTokenValidationResponse {
                    correlation_id: req.correlation_id.clone(),
                    status_code: status,
                    endpoint_id: ep.map(Into::into),
                    token_id: ep.map(|_| "tid".into()),
                    ..Default::default()
                };
                let _ = bus
                    .publish(m.reply_to.unwrap().as_str(), Bytes::from(resp.to_vec()))
                    .await;
            }
        });
        asked
    }

    #[tokio::test]
    async fn ecap_answers_map_to_kp_statuses_and_are_cached() {
        use std::sync::atomic::Ordering::SeqCst;
        let bus = Arc::new(kaa_bus::MemoryBus::new());
        let asked = provider(
            Arc::clone(&bus),
            HashMap::from([
                ("kettle/good", (200, Some("ep-1"))),
                ("kettle/other", (200, Some("ep-2"))),
                ("kettle/revoked", (401, None)),
                ("kettle/suspended", (403, None)),
                ("kettle/broken", (500, None)),
                ("kettle/bad-id", (200, Some("a.b"))),
            ]),
        )
        .await;
        let r = EcapResolver::new(bus, "epr", Duration::from_secs(2))
            .with_app_names([("kettleV1".to_owned(), "kettle".to_owned())])
            .with_cache(1, Duration::from_secs(60));
        assert_eq!(
            r.resolve("kettleV1", "good").await.unwrap().endpoint_id,
            "ep-1"
        );
        assert_eq!(
            r.resolve("kettleV1", "good").await.unwrap().endpoint_id,
            "ep-1"
        );
        assert_eq!(
            asked.load(SeqCst),
            1,
            "the second answer came from the cache"
        );
        // Another app version is another application: asked, unknown there.
        assert_eq!(
            r.resolve("kettleV2", "good")
                .await
                .unwrap_err()
                .status_code(),
            401
        );
        for (token, status) in [
            ("revoked", 401),
            ("nobody", 401),
            ("suspended", 403),
            ("broken", 503),
            ("bad-id", 503),
        ] {
            assert_eq!(
                r.resolve("kettleV1", token)
                    .await
                    .unwrap_err()
                    .status_code(),
                status,
                "{token}"
            );
        }
        // Bounded: one entry; the newest valid answer replaced the oldest.
        r.resolve("kettleV1", "other").await.unwrap();
        assert_eq!(r.cached(), 1);
        let before = asked.load(SeqCst);
        r.resolve("kettleV1", "good").await.unwrap();
        assert_eq!(asked.load(SeqCst), before + 1, "evicted, asked again");
        // A revocation forgets the endpoint's answers.
        r.endpoint_revoked("ep-1");
        assert_eq!(r.cached(), 0);
        assert!(!format!("{r:?}").contains("good"));
    }

    /// `kaa-stack`'s mode: unknown tokens are their own endpoint IDs, the
    /// register's refusals stand.
    #[tokio::test]
    async fn ecap_with_accept_any_token_admits_only_tokens_the_provider_does_not_know() {
        use std::sync::atomic::Ordering::SeqCst;
        let bus = Arc::new(kaa_bus::MemoryBus::new());
        let asked = provider(
            Arc::clone(&bus),
            HashMap::from([
                ("v1/provisioned", (200, Some("ep-1"))),
                ("v1/revoked", (401, None)),
                ("v1/suspended", (403, None)),
                ("v1/broken", (500, None)),
            ]),
        )
        .await;
        let r = EcapResolver::new(
            Arc::clone(&bus) as Arc<dyn Bus>,
            "epr",
            Duration::from_secs(2),
        )
        .with_unknown_tokens_as_endpoint_ids(true);
        assert_eq!(
            r.resolve("v1", "provisioned").await.unwrap().endpoint_id,
            "ep-1"
        );
        assert_eq!(r.resolve("v1", "dev-7").await.unwrap().endpoint_id, "dev-7");
        for (token, status) in [
            ("revoked", 401),
            ("suspended", 403),
            ("broken", 503),
            ("not.a.token", 401),
        ] {
            assert_eq!(
                r.resolve("v1", token).await.unwrap_err().status_code(),
                status,
                "{token}"
            );
        }
        // Unknown tokens are asked every time (provisioning takes effect).
        let before = asked.load(SeqCst);
        r.resolve("v1", "dev-7").await.unwrap();
        assert_eq!(asked.load(SeqCst), before + 1);
        assert_eq!(r.cached(), 1, "only the provisioned answer");
        // Without the mode an unknown token is 401.
        let strict = EcapResolver::new(bus, "epr", Duration::from_secs(2));
        assert_eq!(
            strict
                .resolve("v1", "dev-7")
                .await
                .unwrap_err()
                .status_code(),
            401
        );
    }

    #[tokio::test]
    async fn ecap_cache_expires_and_no_provider_is_503() {
        use std::sync::atomic::Ordering::SeqCst;
        let bus = Arc::new(kaa_bus::MemoryBus::new());
        let r = EcapResolver::new(
            Arc::clone(&bus) as Arc<dyn Bus>,
            "epr",
            Duration::from_millis(200),
        );
        assert_eq!(r.resolve("v1", "t").await.unwrap_err().status_code(), 503);
        let asked = provider(
            Arc::clone(&bus),
            HashMap::from([("v1/t", (200, Some("ep")))]),
        )
        .await;
        let r = r.with_cache(10, Duration::from_millis(50));
        r.resolve("v1", "t").await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.resolve("v1", "t").await.unwrap();
        assert_eq!(asked.load(SeqCst), 2, "expired answers are asked again");
        let r = EcapResolver::new(bus, "epr", Duration::from_secs(2))
            .with_cache(0, Duration::from_secs(60));
        r.resolve("v1", "t").await.unwrap();
        r.resolve("v1", "t").await.unwrap();
        assert_eq!((r.cached(), asked.load(SeqCst)), (0, 4), "no cache");
    }
}
