//! The ECR REST API under `/api/v1` (axum), with its OpenAPI 3 document.
//!
//! | route | what |
//! | --- | --- |
//! | `PUT/GET/DELETE /endpoints/{endpointId}/app-versions/{appVersionName}[?name=]` | an endpoint's own configuration: a whole document, or (PUT with `Content-Type: application/merge-patch+json`) a JSON Merge Patch over its default and layers (`"mergePatch": true` when read) |
//! | `GET /endpoints/{endpointId}/app-versions/{appVersionName}/configurations` | all its named configurations |
//! | `PUT/GET/DELETE /app-versions/{appVersionName}[?name=]` | an app version's default configuration |
//! | `GET /app-versions/{appVersionName}/configurations` | all its named defaults |
//! | `PUT /endpoints/batch[?name=][&dryRun=true]` | one configuration for many endpoints, atomically |
//! | `GET /endpoints/{endpointId}/app-versions/{appVersionName}/effective[?name=]` | what ECR serves the endpoint: its own configuration, else the default as the active rollout's cohort says |
//! | `GET /statuses?endpointId=…[&appVersionName=][&configId=][&page=][&size=]` | the status history, Spring-style pages |
//! | `GET /app-versions` | the app versions ECR knows, with their defaults' config IDs |
//! | `GET /app-versions/{appVersionName}/status-counts[?name=]` | per config ID, the endpoints whose latest status it is (applied, rejected, dispatched) |
//! | `POST /app-versions/{appVersionName}/rollouts[?name=]` | begin a staged rollout (201; 409 when one is active) |
//! | `GET /app-versions/{appVersionName}/rollouts[?name=]` | its rollouts, newest first (every name unless `name` is given) |
//! | `GET /rollouts/{rolloutId}` | one rollout, `ETag: "<rolloutId>-<revision>"` |
//! | `POST /app-versions/{appVersionName}/layers/{layerName}/rollouts[?name=]` | begin a staged rollout of a new version of a layer (201; 409 when one of that layer is active; see [`crate::core`]'s layer rollouts) |
//! | `POST /rollouts/{rolloutId}/pause`, `/resume`, `/abort`, `/promote` | act on it (`If-Match` optional; 409 when its state does not allow it) |
//! | `PUT/DELETE /app-versions/{appVersionName}/groups/{groupName}` | create (201, or 204 when it existed) or delete (409 while a layer targets it) an endpoint group |
//! | `GET /app-versions/{appVersionName}/groups[?page=][&size=]` | its groups, with member counts, by name |
//! | `GET/POST /app-versions/{appVersionName}/groups/{groupName}/members` | a page of members; add and remove members in one batch (`{"add": […], "remove": […]}`) |
//! | `GET /app-versions/{appVersionName}/layers[?name=]` | its layers, in merge order per name |
//! | `PUT/GET/DELETE /app-versions/{appVersionName}/layers/{layerName}[?name=]` | one layer: `{"priority", "group", "patch"}` (see [`crate::layers`]) |
//! | `GET /endpoints/{endpointId}/app-versions/{appVersionName}/explain[?name=]` | the effective configuration with, for every JSON Pointer, the source that decided it |
//! | `GET /openapi.json` | this API as OpenAPI 3 (no authentication) |
//! | `GET /ui/` (outside `/api/v1`) | the rollout page, [`super::ui`] (no authentication; it calls this API with the user's token) |
//!
//! Conventions:
//!
//! - PUT bodies are JSON (`Content-Type: application/json` or `application/*+json`,
//!   else 415), at most the configured body limit (default 1 MiB, else 413).
//! - A configuration in a response is `{"configId", "config": "<the JSON as text>",
//!   "createdDate", "updatedDate", "name"}` (dates ISO-8601 UTC), with
//!   `ETag: "<configId>"`. PUT is an upsert and answers 200 with the stored
//!   configuration; storing identical content changes nothing (same config ID, same
//!   `updatedDate`). DELETE answers 204, or 404 when there was nothing.
//! - `If-Match: "<configId>"` (or a list, or `*`) on PUT and DELETE: when it does not
//!   match the current configuration the answer is 412 with the current `ETag`, and
//!   nothing changes. A weak tag (`W/"…"`) never matches (RFC 9110 strong comparison).
//! - Every error is `{"message": "…"}` with a 4xx/5xx status: invalid names (400),
//!   malformed JSON (400), JSON Schema violations (400, naming the JSON path), unknown
//!   app versions when `kaa.applications` lists some (400), missing or unknown token
//!   (401), read-only token on a write (403), unknown route (404), wrong method (405,
//!   with `Allow`), precondition failed (412), body too large (413), wrong content type
//!   (415), a write of a default while a rollout of it is active, a second rollout,
//!   or a rollout action its state does not allow (409), store failure (500).
//! - `?dryRun=true` on every write that can change effective configurations (PUT and
//!   DELETE of a default, of an endpoint's configuration, of a layer; PUT of a batch;
//!   POST of group members) stores and announces nothing and answers 200 with a [`DryRunDto`]: how
//!   many endpoints' effective configurations would change, the first few with
//!   their RFC 6902 JSON Patch, and the app version's JSON Schema verdict on each
//!   would-be document.
//! - An endpoint's own configuration is a whole document unless it is written with
//!   `Content-Type: application/merge-patch+json`: then it is stored as a JSON Merge
//!   Patch (an object, else 400) merged over the endpoint's default and layers (see
//!   [`crate::layers`]), the would-be document checked against the schema (400), and
//!   reading it answers `"mergePatch": true`. A PUT of a default with that content
//!   type is refused with 415 (it would replace the default whole).
//! - Rollouts (see [`crate::rollout`]) carry `ETag: "<rolloutId>-<revision>"`; the
//!   actions take `If-Match` with it (412 with the current `ETag` when it is stale).
//! - Authentication: `Authorization: Bearer <token>`; GET needs `read` or
//!   `read-write`, PUT and DELETE need `read-write`. `auth.enabled: false` switches it
//!   off. `/openapi.json` (and `/health`, `/metrics`) need no token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::core::{BatchOutcome, Ecr, EcrError};
use super::model::{
    self, AppVersionName, ConfigName, EndpointId, Scope, StatusQuery, StatusRecord, StoredConfig,
};
use super::rollout::{
    self, AbortCriteria, Action, Gate, OnAbort, Rollout, RolloutState, StepCounts, StepState,
};
use super::store::{Precondition, StoreError};
use kaa_service::{Metrics, http_metrics, json_error, ops_router};

mod layers;
use layers::WriteQuery;
pub use layers::{
    DryRunChangeDto, DryRunDto, ExplainDto, ExplainedDto, GroupDto, GroupPageDto, LayerDto,
    LayerRequest, LayerRolloutRequest, MemberPageDto, MembersRequest, MembersResultDto,
    SchemaVerdictDto,
};

/// The API prefix.
pub const API_PREFIX: &str = "/api/v1";
/// Default page size of `/statuses`.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size of `/statuses`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Largest page number of `/statuses`.
pub const MAX_PAGE: u32 = 1_000_000;

/// An error answer: a status and `{"message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    etag: Option<String>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            etag: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status, self.message);
        if let Some(etag) = self.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ecr\""),
            );
        }
        response
    }
}

impl From<EcrError> for ApiError {
    fn from(e: EcrError) -> Self {
        match e {
            EcrError::Store(StoreError::PreconditionFailed { current }) => ApiError {
                status: StatusCode::PRECONDITION_FAILED,
                message: format!(
                    "If-Match does not match the current configuration ({})",
                    current
                        .as_deref()
                        .map_or_else(|| "there is none".to_owned(), |c| format!("configId {c}"))
                ),
                etag: current.map(|c| format!("\"{c}\"")),
            },
            EcrError::Store(StoreError::Conflict(message)) | EcrError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, message)
            }
            EcrError::Store(e @ StoreError::RolloutChanged { .. }) => {
                ApiError::new(StatusCode::CONFLICT, format!("{e}; try again"))
            }
            EcrError::Store(StoreError::NotFound(message)) => {
                ApiError::new(StatusCode::NOT_FOUND, message)
            }
            EcrError::RolloutNotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no rollout {id}"))
            }
            EcrError::RolloutPrecondition { etag } => ApiError {
                status: StatusCode::PRECONDITION_FAILED,
                message: format!("If-Match does not match the rollout's current ETag {etag}"),
                etag: Some(etag),
            },
            EcrError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("store failure: {e}"),
                )
            }
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<model::NameError> for ApiError {
    fn from(e: model::NameError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// `Path` with `{"message"}` rejections.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|r| ApiError::new(r.status(), r.body_text()))
    }
}

/// `Query` with `{"message"}` rejections.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| ApiQuery(t))
            .map_err(|r| ApiError::new(r.status(), r.body_text()))
    }
}

/// A JSON request body: content type checked (415), size limited (413), parsed (400).
struct JsonBody<T>(T);

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r: BytesRejection| {
                let status = r.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(status, "request body is larger than the configured limit")
                } else {
                    ApiError::new(status, r.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// A configuration as the API returns it (Kaa's shape: `config` is JSON text).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationDto {
    /// The content-derived config ID.
    pub config_id: String,
    /// The configuration JSON, serialised as a string.
    pub config: String,
    /// When the slot was first written (ISO-8601 UTC).
    pub created_date: String,
    /// When the content last changed (ISO-8601 UTC).
    pub updated_date: String,
    /// The configuration name (`default` when none was given).
    pub name: String,
    /// `true` when this is an endpoint's own configuration stored as a JSON Merge
    /// Patch (RFC 7396) over its default and layers (written with `Content-Type:
    /// application/merge-patch+json`); absent for a whole document.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge_patch: bool,
}

impl From<&StoredConfig> for ConfigurationDto {
    fn from(c: &StoredConfig) -> Self {
        Self {
            config_id: c.config_id.clone(),
            config: c.content.clone(),
            created_date: model::format_iso8601(c.created),
            updated_date: model::format_iso8601(c.updated),
            name: c.name.to_string(),
            merge_patch: false,
        }
    }
}

/// An endpoint's own configuration stored as a JSON Merge Patch (RFC 7396): a JSON
/// object merged over the endpoint's default and layers.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct MergePatchJson(pub Value);

/// Whether the request body is a JSON Merge Patch (`Content-Type:
/// application/merge-patch+json`).
fn is_merge_patch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/merge-patch+json")
        })
}

/// The error body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDto {
    /// What went wrong.
    pub message: String,
}

/// Any JSON value (a configuration): an object, array, string, number, boolean or
/// null.
#[derive(ToSchema)]
#[schema(value_type = Value)]
pub struct AnyJson(pub Value);

/// `PUT /endpoints/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// The configuration to store for every endpoint (any JSON value).
    #[schema(value_type = Value)]
    pub config_payload: Value,
    /// App version name → endpoint IDs: at least one app version, each listing at
    /// least one endpoint (10,000 endpoints at most in all).
    #[schema(schema_with = batch_endpoints_schema)]
    pub endpoints: BTreeMap<String, Vec<String>>,
}

/// The OpenAPI schema of [`BatchRequest::endpoints`]: the names as ECR validates them.
fn batch_endpoints_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let token_name = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(TOKEN_NAME_PATTERN))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .min_properties(Some(1))
        .property_names(Some(token_name()))
        .additional_properties(Some(
            ArrayBuilder::new().items(token_name()).min_items(Some(1)),
        ))
        .build()
}

/// The pattern of an app version name or endpoint ID in the OpenAPI document: no `.`,
/// `*`, `>` (NATS), `/`, `+`, `#` (MQTT), whitespace or control character, as
/// [`model::validate_token_name`] checks (`char::is_whitespace` and `char::is_control`,
/// spelled out as ranges because `\s` means different sets in the ECMA, Python and
/// Rust regex dialects that read the document). The byte-length limit ([`model::MAX_NAME_LEN`])
/// is not expressible in JSON Schema (`maxLength` counts characters); descriptions say
/// it. The `#[param(pattern = …)]` attributes repeat this literal (they take no
/// constant); a test checks they agree.
const TOKEN_NAME_PATTERN: &str = kaa_service::names::TOKEN_NAME_PATTERN;

/// `PUT /endpoints/batch` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultDto {
    /// The config ID of the payload.
    pub config_id: String,
    /// The payload, canonical JSON text.
    pub config: String,
    /// The configuration name.
    pub name: String,
    /// Endpoint configurations created or changed.
    pub changed: usize,
    /// Endpoint configurations that already had this content.
    pub unchanged: usize,
}

/// One status history row.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusDto {
    /// The endpoint.
    pub endpoint_id: String,
    /// The app version.
    pub app_version_name: String,
    /// The configuration name.
    pub name: String,
    /// The configuration ID.
    pub config_id: String,
    /// `DISPATCHED`, `APPLIED` or `REJECTED`.
    pub status: String,
    /// When ECR last sent it over 6/CDTP.
    pub last_dispatched_date: Option<String>,
    /// When the endpoint last confirmed or rejected it.
    pub last_confirmed_date: Option<String>,
    /// The confirmation status code.
    pub status_code: Option<i32>,
    /// The confirmation reason phrase.
    pub reason_phrase: Option<String>,
}

impl From<StatusRecord> for StatusDto {
    fn from(r: StatusRecord) -> Self {
        Self {
            endpoint_id: r.endpoint_id,
            app_version_name: r.app_version,
            name: r.name,
            config_id: r.config_id,
            status: r.status.as_str().to_owned(),
            last_dispatched_date: r.last_dispatched.map(model::format_iso8601),
            last_confirmed_date: r.last_confirmed.map(model::format_iso8601),
            status_code: r.status_code,
            reason_phrase: r.reason_phrase,
        }
    }
}

/// A Spring-style page of status rows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusPageDto {
    /// The rows of this page.
    pub content: Vec<StatusDto>,
    /// Rows matching in total.
    pub total_elements: u64,
    /// Pages in total.
    pub total_pages: u64,
    /// This page's number (zero-based).
    pub number: u32,
    /// The page size.
    pub size: u32,
    /// Rows on this page.
    pub number_of_elements: usize,
    /// Whether this is the first page.
    pub first: bool,
    /// Whether this is the last page.
    pub last: bool,
    /// Whether this page is empty.
    pub empty: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct NameQuery {
    /// The configuration name (7/CMP `^[a-zA-Z0-9_-]+$`, at most 256 characters);
    /// absent: `default`.
    #[param(pattern = "^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 256)]
    name: Option<String>,
}

impl NameQuery {
    fn config_name(&self) -> Result<ConfigName, ApiError> {
        Ok(ConfigName::from_optional(self.name.as_deref())?)
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct EndpointPath {
    /// Endpoint ID: 1 to 256 bytes; no `.`, `*`, `>`, `/`, `+`, `#`, whitespace or
    /// control characters.
    #[serde(rename = "endpointId")]
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    endpoint_id: String,
    /// Application version name: 1 to 256 bytes; no `.`, `*`, `>`, `/`, `+`, `#`,
    /// whitespace or control characters.
    #[serde(rename = "appVersionName")]
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    app_version_name: String,
}

impl EndpointPath {
    fn scope(&self) -> Result<Scope, ApiError> {
        Ok(Scope::Endpoint {
            endpoint_id: EndpointId::new(self.endpoint_id.as_str())?,
            app_version: AppVersionName::new(self.app_version_name.as_str())?,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct AppVersionPath {
    /// Application version name: 1 to 256 bytes; no `.`, `*`, `>`, `/`, `+`, `#`,
    /// whitespace or control characters.
    #[serde(rename = "appVersionName")]
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    app_version_name: String,
}

impl AppVersionPath {
    fn scope(&self) -> Result<Scope, ApiError> {
        Ok(Scope::Default {
            app_version: AppVersionName::new(self.app_version_name.as_str())?,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct StatusParams {
    /// Required: the endpoint (an endpoint ID: 1 to 256 bytes; no `.`, `*`, `>`, `/`,
    /// `+`, `#`, whitespace or control characters).
    #[param(
        required = true,
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    endpoint_id: Option<String>,
    /// Only this app version.
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    app_version_name: Option<String>,
    /// Only this config ID.
    config_id: Option<String>,
    /// Zero-based page number (default 0, at most 1,000,000).
    #[param(value_type = Option<u32>, minimum = 0, maximum = 1_000_000)]
    page: Option<String>,
    /// Page size (default 20, 1 to 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    size: Option<String>,
}

/// Parses `If-Match` into a precondition.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let mut ids = Vec::new();
    let mut any = false;
    for value in headers.get_all(header::IF_MATCH) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("If-Match is not ASCII"))?;
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                any = true;
            } else if tag.starts_with("W/") {
                // Weak tags never match under strong comparison; keep an impossible ID.
                ids.push(String::from("\u{0}weak"));
            } else {
                // Liberal: accept unquoted tags too.
                ids.push(tag.trim_matches('"').to_owned());
            }
        }
    }
    Ok(if !ids.is_empty() {
        Precondition::ConfigId(ids)
    } else if any {
        Precondition::Exists
    } else {
        Precondition::None
    })
}

fn etag_value(config_id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{config_id}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn config_response(config: &StoredConfig) -> Response {
    config_response_as(config, false)
}

/// [`config_response`], saying whether it is an own configuration stored as a
/// merge patch.
fn config_response_as(config: &StoredConfig, merge_patch: bool) -> Response {
    let mut dto = ConfigurationDto::from(config);
    dto.merge_patch = merge_patch;
    let mut response = Json(dto).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag_value(&config.config_id));
    response
}

fn not_found(scope: &Scope, name: &ConfigName) -> ApiError {
    let what = match scope {
        Scope::Default { app_version } => {
            format!("default configuration of app version {app_version}")
        }
        Scope::Endpoint {
            endpoint_id,
            app_version,
        } => format!("configuration of endpoint {endpoint_id} in app version {app_version}"),
    };
    ApiError::new(StatusCode::NOT_FOUND, format!("no {what} named {name}"))
}

/// The state every handler shares.
#[derive(Clone)]
struct ApiState {
    ecr: Arc<Ecr>,
}

async fn put_config(
    state: &ApiState,
    scope: Scope,
    query: &WriteQuery,
    headers: &HeaderMap,
    body: Value,
) -> Result<Response, ApiError> {
    let name = query.config_name()?;
    let precondition = precondition(headers)?;
    if query.dry() {
        return layers::dry_run_config(state, &scope, &name, Some(&body)).await;
    }
    let outcome = state
        .ecr
        .put(&scope, &name, &body, &precondition, model::now())
        .await?;
    Ok(config_response(&outcome.config))
}

async fn get_config(
    state: &ApiState,
    scope: Scope,
    name: ConfigName,
) -> Result<Response, ApiError> {
    match state.ecr.get(&scope, &name).await? {
        Some(config) => Ok(config_response(&config)),
        None => Err(not_found(&scope, &name)),
    }
}

async fn delete_config(
    state: &ApiState,
    scope: Scope,
    query: &WriteQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let name = query.config_name()?;
    let precondition = precondition(headers)?;
    if query.dry() {
        return layers::dry_run_config(state, &scope, &name, None).await;
    }
    match state.ecr.delete(&scope, &name, &precondition).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(not_found(&scope, &name)),
    }
}

async fn list_configs(state: &ApiState, scope: Scope) -> Result<Response, ApiError> {
    let configs = state.ecr.list(&scope).await?;
    Ok(Json(
        configs
            .iter()
            .map(ConfigurationDto::from)
            .collect::<Vec<_>>(),
    )
    .into_response())
}

const CONFIG_PATH: &str = "/endpoints/{endpointId}/app-versions/{appVersionName}";
const DEFAULT_PATH: &str = "/app-versions/{appVersionName}";

/// Store an endpoint's configuration (upsert): a whole document (`application/json`,
/// served as it is, no layer applies), or, with `Content-Type:
/// application/merge-patch+json`, a JSON Merge Patch object applied over the
/// endpoint's default and layers (it follows their changes; refused with 400 when
/// the resulting document violates the schema).
#[utoipa::path(
    put, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}",
    tag = "endpoint configurations",
    params(
        EndpointPath,
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "Expected current config ID, quoted, or *"),
    ),
    request_body(
        description = "The configuration: any JSON document (application/json), or a JSON Merge Patch object over the default and layers (application/merge-patch+json)",
        content((AnyJson = "application/json"), (MergePatchJson = "application/merge-patch+json"))
    ),
    responses(
        (status = 200, description = "Stored (or, with dryRun=true, what the write would change: nothing stored or announced)", body = layers::ConfigOrDryRun, headers(("ETag" = String, description = "\"<configId>\""))),
        (status = 400, description = "Invalid name, JSON or schema violation", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 412, description = "If-Match failed", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn put_endpoint_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let scope = path.scope()?;
    if !is_merge_patch(&headers) {
        return put_config(&state, scope, &query, &headers, body).await;
    }
    let name = query.config_name()?;
    let precondition = precondition(&headers)?;
    if query.dry() {
        return layers::dry_run_patch(&state, &scope, &name, &body).await;
    }
    let outcome = state
        .ecr
        .put_patch(&scope, &name, &body, &precondition, model::now())
        .await?;
    Ok(config_response_as(&outcome.config, true))
}

/// Read an endpoint's configuration.
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}",
    tag = "endpoint configurations",
    params(
        EndpointPath,
        NameQuery,
    ),
    responses(
        (status = 200, body = ConfigurationDto, headers(("ETag" = String, description = "\"<configId>\""))),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_endpoint_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let scope = path.scope()?;
    let name = query.config_name()?;
    let (config, patches) = tokio::join!(
        state.ecr.get(&scope, &name),
        state.ecr.own_patch_names(&scope)
    );
    match config? {
        Some(config) => Ok(config_response_as(
            &config,
            patches?.contains(name.as_str()),
        )),
        None => Err(not_found(&scope, &name)),
    }
}

/// Delete an endpoint's configuration (it falls back to the default).
#[utoipa::path(
    delete, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}",
    tag = "endpoint configurations",
    params(
        EndpointPath,
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "Expected current config ID, quoted, or *"),
    ),
    responses(
        (status = 200, description = "With dryRun=true: what the write would change; nothing stored or announced", body = DryRunDto),
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, body = ErrorDto), (status = 412, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn delete_endpoint_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_config(&state, path.scope()?, &query, &headers).await
}

/// All named configurations of an endpoint in an app version.
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/configurations",
    tag = "endpoint configurations",
    params(
        EndpointPath,
    ),
    responses(
        (status = 200, body = Vec<ConfigurationDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn list_endpoint_configs(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
) -> Result<Response, ApiError> {
    let scope = path.scope()?;
    let (configs, patches) =
        tokio::join!(state.ecr.list(&scope), state.ecr.own_patch_names(&scope));
    let patches = patches?;
    Ok(Json(
        configs?
            .iter()
            .map(|c| ConfigurationDto {
                merge_patch: patches.contains(c.name.as_str()),
                ..ConfigurationDto::from(c)
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

/// Store an app version's default configuration (upsert; a whole document:
/// `application/merge-patch+json` is refused with 415).
#[utoipa::path(
    put, path = "/api/v1/app-versions/{appVersionName}",
    tag = "default configurations",
    params(
        AppVersionPath,
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "Expected current config ID, quoted, or *"),
    ),
    request_body(content = AnyJson, content_type = "application/json", description = "The configuration (any JSON)"),
    responses(
        (status = 200, description = "Stored (or, with dryRun=true, what the write would change: nothing stored or announced)", body = layers::ConfigOrDryRun, headers(("ETag" = String, description = "\"<configId>\""))),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 409, description = "A rollout of this configuration is active", body = ErrorDto),
        (status = 412, body = ErrorDto), (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn put_default_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    if is_merge_patch(&headers) {
        // Not stored whole in its place: a patch sent here would replace the default.
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a default configuration is a whole document (Content-Type: application/json); only an endpoint's own configuration can be a merge patch",
        ));
    }
    put_config(&state, path.scope()?, &query, &headers, body).await
}

/// Read an app version's default configuration.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}",
    tag = "default configurations",
    params(AppVersionPath, NameQuery),
    responses(
        (status = 200, body = ConfigurationDto, headers(("ETag" = String, description = "\"<configId>\""))),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_default_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    get_config(&state, path.scope()?, query.config_name()?).await
}

/// Delete an app version's default configuration.
#[utoipa::path(
    delete, path = "/api/v1/app-versions/{appVersionName}",
    tag = "default configurations",
    params(
        AppVersionPath,
        WriteQuery,
        ("If-Match" = Option<String>, Header, description = "Expected current config ID, quoted, or *"),
    ),
    responses(
        (status = 200, description = "With dryRun=true: what the write would change; nothing stored or announced", body = DryRunDto),
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, body = ErrorDto),
        (status = 409, description = "A rollout of this configuration is active", body = ErrorDto),
        (status = 412, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn delete_default_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    delete_config(&state, path.scope()?, &query, &headers).await
}

/// All named default configurations of an app version.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/configurations",
    tag = "default configurations",
    params(AppVersionPath),
    responses(
        (status = 200, body = Vec<ConfigurationDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn list_default_configs(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
) -> Result<Response, ApiError> {
    list_configs(&state, path.scope()?).await
}

/// Store one configuration for many endpoints, atomically (`?dryRun=true`: predict
/// only).
#[utoipa::path(
    put, path = "/api/v1/endpoints/batch",
    tag = "endpoint configurations",
    params(WriteQuery),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or, with dryRun=true, what the write would change: nothing stored or announced)", body = layers::BatchOrDryRun, headers(("ETag" = String, description = "\"<configId>\" (not with dryRun)"))),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn put_batch(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    let name = query.config_name()?;
    if let Some((app_version, _)) = body.endpoints.iter().find(|(_, ids)| ids.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "app version {app_version:?} lists no endpoints"
        )));
    }
    if query.dry() {
        let predictions = state
            .ecr
            .predict_batch(&body.endpoints, &name, &body.config_payload)
            .await?;
        let parts: Vec<_> = predictions.iter().map(|(a, p)| (a, p)).collect();
        return Ok(layers::dry_run_many(&state, &parts));
    }
    let BatchOutcome {
        config_id,
        content,
        changed,
        unchanged,
    } = state
        .ecr
        .put_batch(&body.endpoints, &name, &body.config_payload, model::now())
        .await?;
    let mut response = Json(BatchResultDto {
        config_id: config_id.clone(),
        config: content,
        name: name.to_string(),
        changed,
        unchanged,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag_value(&config_id));
    Ok(response)
}

fn parse_bounded(
    value: Option<&str>,
    what: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be an integer from {min} to {max} (got {text:?})"
        ))),
    }
}

/// The status history of an endpoint's configurations.
#[utoipa::path(
    get, path = "/api/v1/statuses",
    tag = "statuses",
    params(StatusParams),
    responses(
        (status = 200, body = StatusPageDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_statuses(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<StatusParams>,
) -> Result<Response, ApiError> {
    let endpoint_id = params
        .endpoint_id
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("query parameter endpointId is required"))?;
    let page = parse_bounded(params.page.as_deref(), "page", 0, 0, MAX_PAGE)?;
    let size = parse_bounded(
        params.size.as_deref(),
        "size",
        DEFAULT_PAGE_SIZE,
        1,
        MAX_PAGE_SIZE,
    )?;
    let query = StatusQuery {
        endpoint_id: EndpointId::new(endpoint_id)?,
        app_version: params
            .app_version_name
            .as_deref()
            .map(AppVersionName::new)
            .transpose()?,
        config_id: params.config_id,
        page,
        size,
    };
    let result = state.ecr.statuses(&query).await?;
    let total_pages = result.total_elements.div_ceil(u64::from(size));
    let content: Vec<StatusDto> = result.content.into_iter().map(StatusDto::from).collect();
    Ok(Json(StatusPageDto {
        number_of_elements: content.len(),
        empty: content.is_empty(),
        content,
        total_elements: result.total_elements,
        total_pages,
        number: page,
        size,
        first: page == 0,
        last: u64::from(page) + 1 >= total_pages,
    })
    .into_response())
}

/// `POST /app-versions/{appVersionName}/rollouts` body (see [`crate::rollout`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The new configuration (any JSON value).
    #[schema(value_type = Value)]
    pub config: Value,
    /// Cumulative percentages of the app version's endpoints, each above 0 and at
    /// most 100 (sorted and deduplicated; 1 to 100 of them). Passing the last step
    /// makes the configuration the default for everyone.
    #[schema(schema_with = steps_schema)]
    pub steps: Vec<f64>,
    /// The gate of every step.
    pub gate: Gate,
    /// The abort criteria.
    pub abort: AbortCriteria,
    /// What an abort does.
    pub on_abort: OnAbort,
}

fn steps_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0.0))
                .maximum(Some(100.0)),
        )
        .min_items(Some(1))
        .max_items(Some(rollout::MAX_STEPS))
        .build()
}

/// One step of a rollout.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepDto {
    /// The cumulative percentage.
    pub percent: f64,
    /// `pending`, `soaking`, `passed` or `failed`.
    pub state: StepState,
    /// Known endpoints following the default in the cohort.
    pub targeted: u64,
    /// Of those, seen reached (dispatched, applied or rejected).
    pub delivered: u64,
    /// Applied the new configuration.
    pub applied: u64,
    /// Rejected it.
    pub rejected: u64,
    /// Dispatched without a report within the report timeout.
    pub timed_out: u64,
    /// When it began (ISO-8601 UTC).
    pub started_date: Option<String>,
    /// When its soak time ends (ISO-8601 UTC).
    pub soak_until: Option<String>,
}

/// A rollout. The current step of an active rollout has live counts; the others
/// have the counts they ended with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDto {
    /// Its ID.
    pub rollout_id: String,
    /// The app version.
    pub app_version_name: String,
    /// The configuration name.
    pub name: String,
    /// The new configuration's ID.
    pub config_id: String,
    /// The new configuration, serialised as a string (as in configurations).
    pub config: String,
    /// The default's config ID when it began (null: there was none).
    pub previous_config_id: Option<String>,
    /// `running`, `paused`, `halted`, `completed` or `reverted`.
    pub state: RolloutState,
    /// Why it stopped, or null.
    pub reason: Option<String>,
    /// The index of the current step.
    pub step: usize,
    /// The steps.
    pub steps: Vec<StepDto>,
    /// The gate.
    pub gate: Gate,
    /// The abort criteria.
    pub abort: AbortCriteria,
    /// What an abort does.
    pub on_abort: OnAbort,
    /// When it was created (ISO-8601 UTC).
    pub created_date: String,
    /// When it last changed (ISO-8601 UTC).
    pub updated_date: String,
    /// A layer rollout's layer (then `configId` / `config` are those of the new
    /// version's patch and `previousConfigId` that of the stored version's patch,
    /// null when the layer did not exist); absent for a rollout of the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerRolloutDto>,
}

/// The layer of a layer rollout: its new version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerRolloutDto {
    /// The layer's name.
    pub layer_name: String,
    /// The new version's priority.
    pub priority: i64,
    /// The new version's target group; null: every endpoint.
    pub group: Option<String>,
    /// The new version's JSON Merge Patch.
    #[schema(value_type = Object)]
    pub patch: Value,
}

impl RolloutDto {
    fn new(r: &Rollout, live: Option<StepCounts>) -> Self {
        let date = |ms: i64| model::format_iso8601(kaa_ism::UnixMillis(ms));
        let steps = r
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = match live {
                    Some(live) if i == r.step => live,
                    _ => s.counts,
                };
                StepDto {
                    percent: s.percent,
                    state: s.state,
                    targeted: c.targeted,
                    delivered: c.delivered,
                    applied: c.applied,
                    rejected: c.rejected,
                    timed_out: c.timed_out,
                    started_date: s.started_ms.map(date),
                    soak_until: s.soak_until_ms.map(date),
                }
            })
            .collect();
        Self {
            rollout_id: r.rollout_id.clone(),
            app_version_name: r.app_version.clone(),
            name: r.name.clone(),
            config_id: r.config_id.clone(),
            config: r.content.clone(),
            previous_config_id: r.previous_config_id.clone(),
            state: r.state,
            reason: r.reason.clone(),
            step: r.step,
            steps,
            gate: r.gate.clone(),
            abort: r.abort.clone(),
            on_abort: r.on_abort,
            created_date: date(r.created_ms),
            updated_date: date(r.updated_ms),
            layer: r.layer.as_ref().map(|l| LayerRolloutDto {
                layer_name: l.layer_name.clone(),
                priority: l.priority,
                group: l.group.clone(),
                patch: l.patch.clone(),
            }),
        }
    }
}

fn rollout_response(status: StatusCode, r: &Rollout, live: Option<StepCounts>) -> Response {
    let mut response = (status, Json(RolloutDto::new(r, live))).into_response();
    if let Ok(etag) = HeaderValue::from_str(&r.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// One default of an app version in `GET /app-versions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultSummaryDto {
    /// The configuration name.
    pub name: String,
    /// Its config ID.
    pub config_id: String,
}

/// One app version in `GET /app-versions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppVersionDto {
    /// The app version.
    pub app_version_name: String,
    /// Its default configurations, by name.
    pub configurations: Vec<DefaultSummaryDto>,
}

/// One row of `GET /app-versions/{appVersionName}/status-counts`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCountDto {
    /// The config ID.
    pub config_id: String,
    /// Endpoints whose latest status is this config ID, applied.
    pub applied: u64,
    /// … rejected.
    pub rejected: u64,
    /// … dispatched, not confirmed yet.
    pub dispatched: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RolloutListQuery {
    /// Only rollouts of this configuration name (7/CMP `^[a-zA-Z0-9_-]+$`, at most
    /// 256 characters); absent: every name.
    #[param(pattern = "^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 256)]
    name: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct RolloutPath {
    /// The rollout's ID.
    #[serde(rename = "rolloutId")]
    rollout_id: String,
}

/// Begin a staged rollout of a new default configuration.
#[utoipa::path(
    post, path = "/api/v1/app-versions/{appVersionName}/rollouts",
    tag = "rollouts",
    params(AppVersionPath, NameQuery),
    request_body(content = RolloutRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Begun: the first step's cohort is announced the configuration", body = RolloutDto,
            headers(("ETag" = String, description = "\"<rolloutId>-<revision>\""), ("Location" = String, description = "/api/v1/rollouts/<rolloutId>"))),
        (status = 400, description = "Invalid name, body or schema violation", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 409, description = "A rollout of this configuration is active, or the configuration is the default already", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn post_rollout(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
    JsonBody(body): JsonBody<RolloutRequest>,
) -> Result<Response, ApiError> {
    let app_version = AppVersionName::new(path.app_version_name.as_str())?;
    let name = query.config_name()?;
    let spec = crate::core::RolloutSpec {
        config: body.config,
        steps: body.steps,
        gate: body.gate,
        abort: body.abort,
        on_abort: body.on_abort,
    };
    let now = model::now();
    let r = state
        .ecr
        .create_rollout(&app_version, &name, &spec, now)
        .await?;
    let live = state.ecr.rollout_counts(&r, now).await.ok();
    let mut response = rollout_response(StatusCode::CREATED, &r, live);
    if let Ok(location) = HeaderValue::from_str(&format!("{API_PREFIX}/rollouts/{}", r.rollout_id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The rollouts of an app version, newest first.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/rollouts",
    tag = "rollouts",
    params(AppVersionPath, RolloutListQuery),
    responses(
        (status = 200, body = Vec<RolloutDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn list_rollouts(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<RolloutListQuery>,
) -> Result<Response, ApiError> {
    let app_version = AppVersionName::new(path.app_version_name.as_str())?;
    let name = query.name.as_deref().map(ConfigName::new).transpose()?;
    let rollouts = state
        .ecr
        .rollouts(&app_version, name.as_ref(), model::now())
        .await?;
    Ok(Json(
        rollouts
            .iter()
            .map(|(r, live)| RolloutDto::new(r, *live))
            .collect::<Vec<_>>(),
    )
    .into_response())
}

/// One rollout.
#[utoipa::path(
    get, path = "/api/v1/rollouts/{rolloutId}",
    tag = "rollouts",
    params(RolloutPath),
    responses(
        (status = 200, body = RolloutDto, headers(("ETag" = String, description = "\"<rolloutId>-<revision>\""))),
        (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_rollout(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<RolloutPath>,
) -> Result<Response, ApiError> {
    let (r, live) = state.ecr.rollout(&path.rollout_id, model::now()).await?;
    Ok(rollout_response(StatusCode::OK, &r, live))
}

async fn act(
    state: &ApiState,
    rollout_id: &str,
    action: Action,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let if_match = precondition(headers)?;
    let now = model::now();
    let r = state
        .ecr
        .act_on_rollout(rollout_id, action, &if_match, now)
        .await?;
    let live = if r.state.is_active() {
        state.ecr.rollout_counts(&r, now).await.ok()
    } else {
        None
    };
    Ok(rollout_response(StatusCode::OK, &r, live))
}

macro_rules! rollout_action {
    ($handler:ident, $action:expr, $path:literal, $summary:literal, $conflict:literal) => {
        #[doc = $summary]
        #[utoipa::path(
            post, path = $path,
            tag = "rollouts",
            params(
                RolloutPath,
                ("If-Match" = Option<String>, Header, description = "The rollout's current ETag, quoted, or *"),
            ),
            responses(
                (status = 200, body = RolloutDto, headers(("ETag" = String, description = "\"<rolloutId>-<revision>\""))),
                (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
                (status = 404, body = ErrorDto),
                (status = 409, description = $conflict, body = ErrorDto),
                (status = 412, description = "If-Match does not match", body = ErrorDto),
            ),
            security(("bearer" = []))
        )]
        async fn $handler(
            State(state): State<ApiState>,
            ApiPath(path): ApiPath<RolloutPath>,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            act(&state, &path.rollout_id, $action, &headers).await
        }
    };
}

rollout_action!(
    pause_rollout,
    Action::Pause,
    "/api/v1/rollouts/{rolloutId}/pause",
    "Pause a running rollout (its cohort keeps the new configuration).",
    "Not running"
);
rollout_action!(
    resume_rollout,
    Action::Resume,
    "/api/v1/rollouts/{rolloutId}/resume",
    "Resume a paused rollout.",
    "Not paused"
);
rollout_action!(
    abort_rollout,
    Action::Abort,
    "/api/v1/rollouts/{rolloutId}/abort",
    "Abort a rollout: as its onAbort says (revert or halt); a halted rollout reverts.",
    "Completed or reverted already"
);
rollout_action!(
    promote_rollout,
    Action::Promote,
    "/api/v1/rollouts/{rolloutId}/promote",
    "Pass the current step by hand, whatever its gate says (the last step completes the rollout).",
    "Completed or reverted already"
);

/// The app versions ECR knows (listed in `kaa.applications`, or seen: endpoints,
/// defaults, rollouts), with their default configurations.
#[utoipa::path(
    get, path = "/api/v1/app-versions",
    tag = "default configurations",
    responses(
        (status = 200, body = Vec<AppVersionDto>),
        (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_app_versions(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut known = state
        .ecr
        .store()
        .app_versions()
        .await
        .map_err(EcrError::from)?;
    for listed in state.ecr.apps().listed() {
        if !known.iter().any(|k| k.app_version == listed) {
            known.push(crate::store::AppVersionSummary {
                app_version: listed,
                defaults: Vec::new(),
            });
        }
    }
    known.sort_by(|a, b| a.app_version.cmp(&b.app_version));
    let dto: Vec<AppVersionDto> = known
        .into_iter()
        .filter(|k| {
            AppVersionName::new(k.app_version.as_str())
                .is_ok_and(|a| state.ecr.apps().check(&a).is_ok())
        })
        .map(|k| AppVersionDto {
            app_version_name: k.app_version,
            configurations: k
                .defaults
                .into_iter()
                .map(|(name, config_id)| DefaultSummaryDto { name, config_id })
                .collect(),
        })
        .collect();
    Ok(Json(dto).into_response())
}

/// Per config ID, how many endpoints' latest status for the configuration `name`
/// of the app version is that config ID applied, rejected or dispatched.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/status-counts",
    tag = "statuses",
    params(AppVersionPath, NameQuery),
    responses(
        (status = 200, body = Vec<StatusCountDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_status_counts(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let app_version = AppVersionName::new(path.app_version_name.as_str())?;
    let name = query.config_name()?;
    state.ecr.apps().check(&app_version)?;
    state.ecr.flush_statuses().await;
    let counts = state
        .ecr
        .store()
        .status_counts(&app_version, &name)
        .await
        .map_err(EcrError::from)?;
    Ok(Json(
        counts
            .into_iter()
            .map(|c| StatusCountDto {
                config_id: c.config_id,
                applied: c.applied,
                rejected: c.rejected,
                dispatched: c.dispatched,
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

/// What ECR serves an endpoint: its own configuration, else the default, as the
/// cohort of an active rollout says (the 6/CDTP answer).
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/effective",
    tag = "endpoint configurations",
    params(EndpointPath, NameQuery),
    responses(
        (status = 200, body = ConfigurationDto, headers(("ETag" = String, description = "\"<configId>\""))),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_effective_config(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let scope = path.scope()?;
    let name = query.config_name()?;
    let Scope::Endpoint {
        endpoint_id,
        app_version,
    } = &scope
    else {
        return Err(not_found(&scope, &name));
    };
    match state.ecr.effective(endpoint_id, app_version, &name).await? {
        Some((config, _)) => Ok(config_response(&config)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "endpoint {endpoint_id} has no configuration named {name} in app version {app_version}, and there is no default"
            ),
        )),
    }
}

struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document of the ECR REST API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kaa ECR (Endpoint Configuration Repository)", description = "Endpoint and default configurations, status history."),
    paths(
        put_endpoint_config, get_endpoint_config, delete_endpoint_config, list_endpoint_configs,
        put_default_config, get_default_config, delete_default_config, list_default_configs,
        put_batch, get_statuses, get_effective_config,
        get_app_versions, get_status_counts,
        post_rollout, list_rollouts, get_rollout,
        pause_rollout, resume_rollout, abort_rollout, promote_rollout,
        layers::put_group, layers::delete_group, layers::list_groups, layers::list_members,
        layers::post_members, layers::list_layers, layers::get_layer, layers::put_layer,
        layers::delete_layer, layers::get_explain, layers::post_layer_rollout,
    ),
    components(schemas(
        ConfigurationDto, MergePatchJson, ErrorDto, BatchRequest, BatchResultDto, StatusDto, StatusPageDto,
        RolloutRequest, RolloutDto, StepDto, AppVersionDto, DefaultSummaryDto, StatusCountDto,
        Gate, AbortCriteria, OnAbort, RolloutState, StepState,
        GroupDto, GroupPageDto, MemberPageDto, MembersRequest, MembersResultDto, LayerRequest,
        LayerDto, DryRunDto, DryRunChangeDto, SchemaVerdictDto, ExplainDto, ExplainedDto,
        layers::ConfigOrDryRun, layers::LayerOrDryRun, layers::MembersOrDryRun,
        layers::BatchOrDryRun, LayerRolloutRequest, LayerRolloutDto,
    )),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// The OpenAPI 3 document as JSON.
pub fn openapi_json() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}

pub use kaa_service::auth::Authenticator;
use kaa_service::auth::authenticate;

/// Gives every error answer the `{"message"}` body, including axum's own (unknown
/// route 404, 405, extractor rejections), keeping their headers (e.g. `Allow`).
async fn normalise_errors(request: Request, next: Next) -> Response {
    // Kept for the error message only: cheap clones (no copy of the path).
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no route for {method} {}", uri.path()),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("method {method} is not allowed on {}", uri.path())
        }
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The whole HTTP application: the REST API under `/api/v1` (authentication, body
/// limit), `/health` and `/metrics` and the page at `/ui/` (no authentication), HTTP metrics, and the
/// `{"message"}` error normalisation over everything, unknown routes included.
pub fn app(ecr: Arc<Ecr>, auth: Authenticator, body_limit: usize, metrics: Metrics) -> Router {
    let auth = auth.with_realm("ecr");
    let state = ApiState { ecr };
    let api = Router::new()
        .route("/endpoints/batch", put(put_batch))
        .route(
            CONFIG_PATH,
            put(put_endpoint_config)
                .get(get_endpoint_config)
                .delete(delete_endpoint_config),
        )
        .route(
            &format!("{CONFIG_PATH}/configurations"),
            get(list_endpoint_configs),
        )
        .route(
            DEFAULT_PATH,
            put(put_default_config)
                .get(get_default_config)
                .delete(delete_default_config),
        )
        .route(
            &format!("{DEFAULT_PATH}/configurations"),
            get(list_default_configs),
        )
        .route("/statuses", get(get_statuses))
        .route(
            &format!("{CONFIG_PATH}/effective"),
            get(get_effective_config),
        )
        .route("/app-versions", get(get_app_versions))
        .route(
            &format!("{DEFAULT_PATH}/status-counts"),
            get(get_status_counts),
        )
        .route(
            &format!("{DEFAULT_PATH}/rollouts"),
            post(post_rollout).get(list_rollouts),
        )
        .route(&format!("{DEFAULT_PATH}/groups"), get(layers::list_groups))
        .route(
            &format!("{DEFAULT_PATH}/groups/{{groupName}}"),
            put(layers::put_group).delete(layers::delete_group),
        )
        .route(
            &format!("{DEFAULT_PATH}/groups/{{groupName}}/members"),
            get(layers::list_members).post(layers::post_members),
        )
        .route(&format!("{DEFAULT_PATH}/layers"), get(layers::list_layers))
        .route(
            &format!("{DEFAULT_PATH}/layers/{{layerName}}"),
            put(layers::put_layer)
                .get(layers::get_layer)
                .delete(layers::delete_layer),
        )
        .route(
            &format!("{DEFAULT_PATH}/layers/{{layerName}}/rollouts"),
            post(layers::post_layer_rollout),
        )
        .route(&format!("{CONFIG_PATH}/explain"), get(layers::get_explain))
        .route("/rollouts/{rolloutId}", get(get_rollout))
        .route("/rollouts/{rolloutId}/pause", post(pause_rollout))
        .route("/rollouts/{rolloutId}/resume", post(resume_rollout))
        .route("/rollouts/{rolloutId}/abort", post(abort_rollout))
        .route("/rollouts/{rolloutId}/promote", post(promote_rollout))
        .route_layer(middleware::from_fn_with_state(auth, authenticate))
        .route_layer(middleware::from_fn_with_state(
            metrics.clone(),
            http_metrics,
        ))
        .route("/openapi.json", get(|| async { Json(openapi_json()) }))
        .with_state(state);
    Router::new()
        .nest(API_PREFIX, api)
        .merge(ops_router(metrics))
        .merge(super::ui::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(normalise_errors))
}
