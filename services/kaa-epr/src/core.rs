//! [`Epr`]: the register's operations, shared by the REST API and the bus side.
//!
//! Every change is committed to the store first; then the [`Event`] it causes goes
//! to the event channel, which the bus side publishes (9/ELCE lifecycle events and
//! 16/ECAP `endpoint.token.revoked`).
//!
//! # Applications and the app version rule
//!
//! 16/ECAP validates a token for an *application* (`appName`), while an endpoint
//! is registered with an *app version*. The register maps app versions to
//! applications with `kaa.applications.<app>.versions.<version>` (the same section
//! ECR reads); an app version that is not listed is its own application. A
//! validation request succeeds only when its `appName` is the application of the
//! endpoint's app version: a token used under another application is refused with
//! 403. With no `kaa.applications` (and KPC sending the app version name from the
//! topic as `appName`, its default), a token is therefore valid for exactly its
//! endpoint's app version. When `kaa.applications` lists versions, only those can
//! be registered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use kaa_ism::UnixMillis;

use super::model::{
    AppVersionName, Endpoint, EndpointId, Metadata, NewEndpoint, NewToken, TokenRecord,
    TokenStatus, token_hash,
};
use super::store::{EndpointStore, StoreError, Transition};

/// The most endpoints one batch registration may hold.
pub const DEFAULT_MAX_BATCH: usize = 10_000;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EprError {
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint or token (404).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what is stored (409): already registered, or a
    /// revoked token.
    #[error("{0}")]
    Conflict(String),
    /// Not allowed for this caller (403): a 16/ECAP transition of another
    /// application's token.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed (500).
    #[error(transparent)]
    Store(StoreError),
    /// No randomness for a token (500).
    #[error(transparent)]
    Random(#[from] super::model::RandomError),
}

impl From<StoreError> for EprError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyRegistered(id) => {
                EprError::Conflict(format!("endpoint {id:?} is already registered"))
            }
            other => EprError::Store(other),
        }
    }
}

impl From<kaa_service::names::NameError> for EprError {
    fn from(e: kaa_service::names::NameError) -> Self {
        EprError::Invalid(e.to_string())
    }
}

/// A change the bus side announces.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// 9/ELCE `registered`.
    Registered {
        /// The endpoint.
        endpoint_id: String,
        /// Its app version.
        app_version: String,
    },
    /// 9/ELCE `unregistered`.
    Unregistered {
        /// The endpoint.
        endpoint_id: String,
        /// Its app version.
        app_version: String,
    },
    /// 9/ELCE `appversion-updated`.
    AppVersionUpdated {
        /// The endpoint.
        endpoint_id: String,
        /// The new app version.
        app_version: String,
        /// The previous one.
        previous: String,
    },
    /// 16/ECAP `endpoint.token.revoked`.
    TokensRevoked {
        /// The application (see the module docs).
        app_name: String,
        /// The endpoint.
        endpoint_id: String,
        /// The token IDs.
        token_ids: Vec<String>,
    },
}

/// App version → application (`kaa.applications`); see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Applications {
    versions: HashMap<String, String>,
}

impl Applications {
    /// No map: every app version is its own application and any valid name is
    /// accepted.
    pub fn open() -> Self {
        Self::default()
    }

    /// From `application → [app versions]`.
    pub fn new(apps: &BTreeMap<String, Vec<String>>) -> Self {
        let versions = apps
            .iter()
            .flat_map(|(app, versions)| versions.iter().map(move |v| (v.clone(), app.clone())))
            .collect();
        Self { versions }
    }

    /// The application of `app_version`.
    pub fn application_of<'a>(&'a self, app_version: &'a str) -> &'a str {
        self.versions
            .get(app_version)
            .map_or(app_version, String::as_str)
    }

    fn check(&self, app_version: &AppVersionName) -> Result<(), EprError> {
        if self.versions.is_empty() || self.versions.contains_key(app_version.as_str()) {
            Ok(())
        } else {
            Err(EprError::Invalid(format!(
                "unknown app version {:?} (not in kaa.applications)",
                app_version.as_str()
            )))
        }
    }
}

/// One registered endpoint of a batch, with its token when one was issued.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Its token, when the batch asked for tokens.
    pub token: Option<NewToken>,
}

/// The outcome of a 16/ECAP token validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// 200: the token is active and valid for the application.
    Valid {
        /// The token ID.
        token_id: String,
        /// The endpoint.
        endpoint_id: String,
    },
    /// 404: no such token.
    Unknown,
    /// 401: the token is revoked.
    Revoked {
        /// The token ID.
        token_id: String,
    },
    /// 403: the token is suspended.
    Suspended {
        /// The token ID.
        token_id: String,
    },
    /// 403: the token belongs to an endpoint of another application.
    OtherApplication {
        /// The token ID.
        token_id: String,
    },
}

impl Validation {
    /// The 16/ECAP `statusCode`.
    pub fn status_code(&self) -> i32 {
        match self {
            Validation::Valid { .. } => 200,
            Validation::Unknown => 404,
            Validation::Revoked { .. } => 401,
            Validation::Suspended { .. } | Validation::OtherApplication { .. } => 403,
        }
    }

    /// The `reasonPhrase` of a refusal.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Validation::Valid { .. } => None,
            Validation::Unknown => Some("unknown endpoint token"),
            Validation::Revoked { .. } => Some("endpoint token revoked"),
            Validation::Suspended { .. } => Some("endpoint token suspended"),
            Validation::OtherApplication { .. } => {
                Some("endpoint token is not valid for this application")
            }
        }
    }
}

/// The register (see the [module docs](self)).
#[derive(Debug)]
pub struct Epr {
    store: Arc<dyn EndpointStore>,
    apps: Applications,
    events: Option<UnboundedSender<Event>>,
    max_batch: usize,
}

impl Epr {
    /// A register over `store`; `events` receives every committed change.
    pub fn new(
        store: Arc<dyn EndpointStore>,
        apps: Applications,
        events: Option<UnboundedSender<Event>>,
    ) -> Self {
        Self {
            store,
            apps,
            events,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// Sets the most endpoints one batch may hold (default [`DEFAULT_MAX_BATCH`]).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn EndpointStore> {
        &self.store
    }

    /// The app version → application map.
    pub fn applications(&self) -> &Applications {
        &self.apps
    }

    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Registers one endpoint, with a token when `issue_token`.
    pub async fn register(
        &self,
        endpoint: NewEndpoint,
        issue_token: bool,
        now: UnixMillis,
    ) -> Result<Provisioned, EprError> {
        let mut all = self
            .register_batch(vec![endpoint], issue_token, now)
            .await?;
        all.pop()
            .ok_or_else(|| EprError::Invalid("nothing registered".into()))
    }

    /// Registers many endpoints in one transaction (all or none), each with a new
    /// token when `issue_tokens`.
    pub async fn register_batch(
        &self,
        endpoints: Vec<NewEndpoint>,
        issue_tokens: bool,
        now: UnixMillis,
    ) -> Result<Vec<Provisioned>, EprError> {
        if endpoints.is_empty() {
            return Err(EprError::Invalid("no endpoints to register".into()));
        }
        if endpoints.len() > self.max_batch {
            return Err(EprError::Invalid(format!(
                "{} endpoints in one batch; at most {} are allowed",
                endpoints.len(),
                self.max_batch
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(endpoints.len());
        for e in &endpoints {
            self.apps.check(&e.app_version)?;
            // Listed twice: the second registration would find the endpoint
            // registered by the first (409, like one already in the store), and the
            // batch is all or nothing. 409 rather than 400 also keeps the OpenAPI
            // document true: JSON Schema cannot say "unique endpointId" of a list.
            if !seen.insert(e.endpoint_id.as_str()) {
                return Err(EprError::Conflict(format!(
                    "endpoint {:?} is listed twice",
                    e.endpoint_id.as_str()
                )));
            }
        }
        let mut provisioned = Vec::with_capacity(endpoints.len());
        let mut rows = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let token = if issue_tokens {
                let t = NewToken::generate()?;
                rows.push((i, t.token_id.clone(), t.hash.clone()));
                Some(t)
            } else {
                None
            };
            provisioned.push(Provisioned {
                endpoint_id: e.endpoint_id.clone(),
                token,
            });
        }
        let events: Vec<Event> = endpoints
            .iter()
            .map(|e| Event::Registered {
                endpoint_id: e.endpoint_id.to_string(),
                app_version: e.app_version.to_string(),
            })
            .collect();
        let tokens = rows.len();
        self.store.register(endpoints, rows, now).await?;
        tracing::info!(
            endpoints = provisioned.len(),
            tokens,
            "endpoints registered"
        );
        for event in events {
            self.emit(event);
        }
        Ok(provisioned)
    }

    /// The endpoint with this ID (404 when none).
    pub async fn endpoint(&self, id: &EndpointId) -> Result<Endpoint, EprError> {
        self.store
            .endpoint(id)
            .await?
            .ok_or_else(|| not_found_endpoint(id))
    }

    /// The endpoints with these IDs that are registered, in any order, each once:
    /// one store read however many IDs (the bus's metadata lookup).
    pub async fn endpoints(&self, ids: &[EndpointId]) -> Result<Vec<Endpoint>, EprError> {
        Ok(self.store.endpoints(ids).await?)
    }

    /// Unregisters an endpoint: its tokens go with it (announced as revoked).
    pub async fn unregister(&self, id: &EndpointId) -> Result<Endpoint, EprError> {
        let gone = self
            .store
            .unregister(id)
            .await?
            .ok_or_else(|| not_found_endpoint(id))?;
        let app_version = gone.endpoint.app_version.to_string();
        tracing::info!(endpoint_id = %id, "endpoint unregistered");
        if !gone.live_token_ids.is_empty() {
            self.emit(Event::TokensRevoked {
                app_name: self.apps.application_of(&app_version).to_owned(),
                endpoint_id: id.to_string(),
                token_ids: gone.live_token_ids,
            });
        }
        self.emit(Event::Unregistered {
            endpoint_id: id.to_string(),
            app_version,
        });
        Ok(gone.endpoint)
    }

    /// Moves an endpoint to another app version; the endpoint as it is now.
    pub async fn set_app_version(
        &self,
        id: &EndpointId,
        app_version: &AppVersionName,
        now: UnixMillis,
    ) -> Result<Endpoint, EprError> {
        self.apps.check(app_version)?;
        let previous = self
            .store
            .set_app_version(id, app_version, now)
            .await?
            .ok_or_else(|| not_found_endpoint(id))?;
        if &previous != app_version {
            tracing::info!(endpoint_id = %id, app_version = %app_version, previous = %previous, "app version changed");
            self.emit(Event::AppVersionUpdated {
                endpoint_id: id.to_string(),
                app_version: app_version.to_string(),
                previous: previous.to_string(),
            });
        }
        self.endpoint(id).await
    }

    /// Replaces an endpoint's metadata.
    pub async fn set_metadata(
        &self,
        id: &EndpointId,
        metadata: &Metadata,
        now: UnixMillis,
    ) -> Result<Endpoint, EprError> {
        if !self.store.set_metadata(id, metadata, now).await? {
            return Err(not_found_endpoint(id));
        }
        self.endpoint(id).await
    }

    /// Issues a new token for an endpoint: the token is in the answer only.
    pub async fn issue_token(
        &self,
        id: &EndpointId,
        now: UnixMillis,
    ) -> Result<(TokenRecord, NewToken), EprError> {
        let token = NewToken::generate()?;
        let record = self
            .store
            .add_token(id, &token.token_id, &token.hash, now)
            .await?
            .ok_or_else(|| not_found_endpoint(id))?;
        tracing::info!(endpoint_id = %id, token_id = %record.token_id, "endpoint token issued");
        Ok((record, token))
    }

    /// An endpoint's tokens (IDs and statuses).
    pub async fn tokens(&self, id: &EndpointId) -> Result<Vec<TokenRecord>, EprError> {
        self.store
            .tokens(id)
            .await?
            .ok_or_else(|| not_found_endpoint(id))
    }

    /// Moves a token to `target` (409 from revoked); a revocation is announced.
    pub async fn set_token_status(
        &self,
        token_id: &str,
        target: TokenStatus,
        now: UnixMillis,
    ) -> Result<TokenRecord, EprError> {
        let transition = self
            .store
            .set_token_status(token_id, target, now)
            .await?
            .ok_or_else(|| EprError::NotFound(format!("no token {token_id:?}")))?;
        match transition {
            Transition::Final(token) => Err(EprError::Conflict(format!(
                "token {:?} is revoked, which is final",
                token.token_id
            ))),
            Transition::Done {
                token,
                app_version,
                changed,
            } => {
                if changed {
                    tracing::info!(token_id = %token.token_id, endpoint_id = %token.endpoint_id, status = %target, "endpoint token status changed");
                }
                if changed && target == TokenStatus::Revoked {
                    self.emit(Event::TokensRevoked {
                        app_name: self.apps.application_of(app_version.as_str()).to_owned(),
                        endpoint_id: token.endpoint_id.to_string(),
                        token_ids: vec![token.token_id.clone()],
                    });
                }
                Ok(token)
            }
        }
    }

    /// Moves the token `token` (the secret, as a 16/ECAP consumer names it) of
    /// an endpoint of application `app_name` to `target`: 404 for an unknown
    /// token, 403 ([`EprError::Forbidden`]) for a token of another
    /// application's endpoint, otherwise as [`Epr::set_token_status`] (409 from
    /// revoked; a revocation is announced).
    pub async fn set_token_status_by_token(
        &self,
        app_name: &str,
        token: &str,
        target: TokenStatus,
        now: UnixMillis,
    ) -> Result<TokenRecord, EprError> {
        let Some(owner) = self.store.find_token(&token_hash(token)).await? else {
            return Err(EprError::NotFound("unknown endpoint token".into()));
        };
        if self
            .apps
            .application_of(owner.endpoint.app_version.as_str())
            != app_name
        {
            return Err(EprError::Forbidden(
                "the token belongs to an endpoint of another application".into(),
            ));
        }
        self.set_token_status(&owner.token.token_id, target, now)
            .await
    }

    /// Validates a token for an application (16/ECAP; see the module docs).
    pub async fn validate(&self, app_name: &str, token: &str) -> Result<Validation, EprError> {
        let Some(owner) = self.store.find_token(&token_hash(token)).await? else {
            return Ok(Validation::Unknown);
        };
        let token_id = owner.token.token_id;
        Ok(match owner.token.status {
            TokenStatus::Revoked => Validation::Revoked { token_id },
            TokenStatus::Suspended => Validation::Suspended { token_id },
            TokenStatus::Active
                if self
                    .apps
                    .application_of(owner.endpoint.app_version.as_str())
                    != app_name =>
            {
                Validation::OtherApplication { token_id }
            }
            TokenStatus::Active => Validation::Valid {
                token_id,
                endpoint_id: owner.endpoint.endpoint_id.to_string(),
            },
        })
    }
}

fn not_found_endpoint(id: &EndpointId) -> EprError {
    EprError::NotFound(format!("no endpoint {:?}", id.as_str()))
}
