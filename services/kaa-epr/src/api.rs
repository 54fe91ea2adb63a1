//! The register's REST API under `/api/v1` (axum).
//!
//! | route | what | answer |
//! | --- | --- | --- |
//! | `POST /endpoints` | register one endpoint `{"endpointId", "appVersionName", "metadata"?, "issueToken"?}` | 201 endpoint (+ `token` when `issueToken`) |
//! | `POST /endpoints/batch` | `{"endpoints": [{…}, …], "issueTokens"?}`: up to 10,000 in one transaction, all or none | 201 `{"registered", "endpoints": [{"endpointId", "tokenId"?, "token"?}]}` |
//! | `GET /endpoints/{endpointId}` | the endpoint with its metadata | 200 |
//! | `DELETE /endpoints/{endpointId}` | unregister (its tokens go too, announced as revoked) | 204 |
//! | `PUT /endpoints/{endpointId}/app-version` | `{"appVersionName"}` | 200 endpoint |
//! | `PUT /endpoints/{endpointId}/metadata` | a JSON object | 200 endpoint |
//! | `POST /endpoints/{endpointId}/tokens` | issue a token | 201 `{"tokenId", "token", "status", …}`: the only time the token is shown |
//! | `GET /endpoints/{endpointId}/tokens` | its tokens: IDs and statuses, never the token or its hash | 200 `[…]` |
//! | `POST /tokens/{tokenId}/suspend` \| `reactivate` \| `revoke` | change a token's status | 200 token |
//! | `GET /openapi.json` | this API as an OpenAPI 3.1 document ([`ApiDoc`]; no authentication) | 200 |
//!
//! An endpoint is `{"endpointId", "appVersionName", "metadata": {…}, "createdDate",
//! "updatedDate"}` (ISO-8601 UTC); a token is `{"tokenId", "endpointId", "status":
//! "active"|"suspended"|"revoked", "createdDate", "updatedDate"}`.
//!
//! Errors are `{"message"}`: invalid names, JSON or metadata that is not an object
//! (400), missing or unknown bearer token (401), read-only token on a write (403),
//! unknown endpoint or token (404), wrong method (405), already registered (or listed
//! twice in one batch) or a revoked token moved (409), body too large (413), not JSON (415), store failure
//! (500). Authentication: [`kaa_service::auth`] (GET needs `read`, everything
//! else `read-write`). `/openapi.json`, `/health` and `/metrics` need no token.
//!
//! The OpenAPI document describes every route above with its parameters (the name
//! rules of endpoint IDs and app version names as patterns), bodies and answers;
//! the router is built from the same route table the tests compare the document
//! with, so a route cannot be served undocumented.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::core::{Epr, EprError, Provisioned};
use super::model::{
    AppVersionName, Endpoint, EndpointId, Metadata, NewEndpoint, TokenRecord, TokenStatus,
    format_iso8601, now,
};
use kaa_service::auth::{Authenticator, authenticate};
use kaa_service::{Metrics, http_metrics, json_error, ops_router};

/// The API prefix.
pub const API_PREFIX: &str = "/api/v1";

/// The default request body limit: 16 MiB (a batch of 10,000 endpoints with some
/// metadata).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// An error answer: a status and `{"message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, self.message)
    }
}

impl From<EprError> for ApiError {
    fn from(e: EprError) -> Self {
        let status = match &e {
            EprError::Invalid(_) => StatusCode::BAD_REQUEST,
            EprError::NotFound(_) => StatusCode::NOT_FOUND,
            EprError::Conflict(_) => StatusCode::CONFLICT,
            EprError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => {
                tracing::error!(error = %e, "register failure");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<kaa_service::names::NameError> for ApiError {
    fn from(e: kaa_service::names::NameError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// A JSON request body: content type checked (415), size limited (413), parsed (400).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .is_some_and(|v| {
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let status = r.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "request body is larger than the configured limit")
            } else {
                ApiError::new(status, r.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}"))
        })
    }
}

/// An endpoint as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDto {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// Its app version.
    pub app_version_name: String,
    /// Its metadata (a JSON object).
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// When it was registered (ISO-8601 UTC).
    #[schema(format = DateTime)]
    pub created_date: String,
    /// When it last changed (ISO-8601 UTC).
    #[schema(format = DateTime)]
    pub updated_date: String,
    /// A token issued with the registration (`issueToken`): shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<IssuedTokenDto>,
}

impl From<&Endpoint> for EndpointDto {
    fn from(e: &Endpoint) -> Self {
        Self {
            endpoint_id: e.endpoint_id.to_string(),
            app_version_name: e.app_version.to_string(),
            metadata: e.metadata.clone(),
            created_date: format_iso8601(e.created),
            updated_date: format_iso8601(e.updated),
            token: None,
        }
    }
}

/// A token as the API lists it: never the token or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenDto {
    /// The token ID.
    pub token_id: String,
    /// The endpoint it identifies.
    pub endpoint_id: String,
    /// `active`, `suspended` or `revoked`.
    pub status: TokenStatus,
    /// When it was issued (ISO-8601 UTC).
    #[schema(format = DateTime)]
    pub created_date: String,
    /// When its status last changed (ISO-8601 UTC).
    #[schema(format = DateTime)]
    pub updated_date: String,
}

impl From<&TokenRecord> for TokenDto {
    fn from(t: &TokenRecord) -> Self {
        Self {
            token_id: t.token_id.clone(),
            endpoint_id: t.endpoint_id.to_string(),
            status: t.status,
            created_date: format_iso8601(t.created),
            updated_date: format_iso8601(t.updated),
        }
    }
}

/// A freshly issued token: the only answer that carries the token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenDto {
    /// The token ID.
    pub token_id: String,
    /// The token: keep it, it is not shown again.
    pub token: String,
}

/// `POST /endpoints` body, and one entry of a batch.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// The endpoint ID: 1 to 256 bytes; no `.`, `*`, `>`, `/`, `+`, `#`, whitespace or
    /// control characters.
    #[schema(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    pub endpoint_id: String,
    /// Its app version (same rules as endpoint IDs; one of `kaa.applications` when
    /// the configuration lists some).
    #[schema(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    pub app_version_name: String,
    /// Its metadata: a JSON object (default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `POST /endpoints` only: issue a token with the registration.
    #[serde(default)]
    pub issue_token: bool,
}

impl RegisterRequest {
    fn into_new(self) -> Result<NewEndpoint, ApiError> {
        let metadata = match self.metadata {
            None | Some(Value::Null) => Metadata::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "metadata must be a JSON object",
                ));
            }
        };
        Ok(NewEndpoint {
            endpoint_id: EndpointId::new(self.endpoint_id)?,
            app_version: AppVersionName::new(self.app_version_name)?,
            metadata,
        })
    }
}

/// `POST /endpoints/batch` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// The endpoints to register: at least one, at most `epr.limits.max-batch`
    /// (default 10,000);
    /// `issueToken` is not allowed in an entry (see `issueTokens`).
    #[schema(value_type = Vec<BatchEntry>, min_items = 1)]
    pub endpoints: Vec<RegisterRequest>,
    /// Issue one token per endpoint (in the answer, shown once).
    #[serde(default)]
    pub issue_tokens: bool,
}

/// One endpoint of a `POST /endpoints/batch` body, as the OpenAPI document describes
/// it: a [`RegisterRequest`] without `issueToken` (the batch has `issueTokens`).
/// Entries are read as [`RegisterRequest`]s (which refuse `issueToken` in a batch);
/// this type is the document's shape of them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchEntry {
    /// The endpoint ID: 1 to 256 bytes; no `.`, `*`, `>`, `/`, `+`, `#`, whitespace or
    /// control characters.
    #[schema(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    pub endpoint_id: String,
    /// Its app version (same rules as endpoint IDs).
    #[schema(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    pub app_version_name: String,
    /// Its metadata: a JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// One endpoint of a batch answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedDto {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// Its token ID, when issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Its token, when issued: shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `POST /endpoints/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultDto {
    /// How many endpoints were registered.
    pub registered: usize,
    /// Each of them, in request order.
    pub endpoints: Vec<ProvisionedDto>,
}

/// `PUT /endpoints/{id}/app-version` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppVersionRequest {
    /// The app version to move to (same rules as endpoint IDs).
    #[schema(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    pub app_version_name: String,
}

type ApiResult<T> = Result<T, ApiError>;

/// The error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDto {
    /// What went wrong.
    pub message: String,
}

/// A JSON object: an endpoint's metadata.
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct MetadataBody(pub Metadata);

/// The `{endpointId}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
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
}

impl EndpointPath {
    fn id(self) -> ApiResult<EndpointId> {
        Ok(EndpointId::new(self.endpoint_id)?)
    }
}

/// The `{tokenId}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TokenPath {
    /// The token ID (as issued; never the token).
    #[serde(rename = "tokenId")]
    token_id: String,
}

/// Register one endpoint (and issue its first token with `issueToken`).
#[utoipa::path(
    post, path = "/api/v1/endpoints", tag = "endpoints",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered; `token` (shown this once) when `issueToken` was set", body = EndpointDto),
        (status = 400, description = "Invalid name, metadata that is not an object, unknown app version, malformed JSON", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 409, description = "Already registered", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn register(
    State(epr): State<Arc<Epr>>,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<EndpointDto>)> {
    let issue = body.issue_token;
    let new = body.into_new()?;
    let id = new.endpoint_id.clone();
    let provisioned = epr.register(new, issue, now()).await?;
    let mut dto = EndpointDto::from(&epr.endpoint(&id).await?);
    dto.token = provisioned.token.map(|t| IssuedTokenDto {
        token_id: t.token_id,
        token: t.token,
    });
    Ok((StatusCode::CREATED, Json(dto)))
}

/// Register many endpoints in one transaction: all or none.
#[utoipa::path(
    post, path = "/api/v1/endpoints/batch", tag = "endpoints",
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "All registered, in request order; tokens (shown this once) with `issueTokens`", body = BatchResultDto),
        (status = 400, description = "An invalid entry (named by its index), too many endpoints, malformed JSON", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 409, description = "One of them is already registered, or listed twice: nothing was stored", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn register_batch(
    State(epr): State<Arc<Epr>>,
    JsonBody(body): JsonBody<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchResultDto>)> {
    let mut endpoints = Vec::with_capacity(body.endpoints.len());
    for (i, e) in body.endpoints.into_iter().enumerate() {
        if e.issue_token {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("endpoints[{i}]: issueToken is set for the whole batch (issueTokens)"),
            ));
        }
        endpoints.push(e.into_new().map_err(|err| {
            ApiError::new(err.status, format!("endpoints[{i}]: {}", err.message))
        })?);
    }
    let provisioned = epr
        .register_batch(endpoints, body.issue_tokens, now())
        .await?;
    let endpoints: Vec<ProvisionedDto> = provisioned
        .into_iter()
        .map(|Provisioned { endpoint_id, token }| ProvisionedDto {
            endpoint_id: endpoint_id.to_string(),
            token_id: token.as_ref().map(|t| t.token_id.clone()),
            token: token.map(|t| t.token),
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(BatchResultDto {
            registered: endpoints.len(),
            endpoints,
        }),
    ))
}

/// An endpoint with its app version and metadata.
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}", tag = "endpoints",
    params(EndpointPath),
    responses(
        (status = 200, body = EndpointDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn get_endpoint(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
) -> ApiResult<Json<EndpointDto>> {
    Ok(Json(EndpointDto::from(&epr.endpoint(&path.id()?).await?)))
}

/// Unregister an endpoint: its tokens go too (announced as revoked).
#[utoipa::path(
    delete, path = "/api/v1/endpoints/{endpointId}", tag = "endpoints",
    params(EndpointPath),
    responses(
        (status = 204, description = "Unregistered"),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn unregister(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
) -> ApiResult<StatusCode> {
    epr.unregister(&path.id()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Move an endpoint to another app version (announced as `appversion-updated`).
#[utoipa::path(
    put, path = "/api/v1/endpoints/{endpointId}/app-version", tag = "endpoints",
    params(EndpointPath),
    request_body(content = AppVersionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint after the change", body = EndpointDto),
        (status = 400, description = "Invalid name, unknown app version, malformed JSON", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn put_app_version(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
    JsonBody(body): JsonBody<AppVersionRequest>,
) -> ApiResult<Json<EndpointDto>> {
    let app = AppVersionName::new(body.app_version_name)?;
    let endpoint = epr.set_app_version(&path.id()?, &app, now()).await?;
    Ok(Json(EndpointDto::from(&endpoint)))
}

/// Replace an endpoint's metadata.
#[utoipa::path(
    put, path = "/api/v1/endpoints/{endpointId}/metadata", tag = "endpoints",
    params(EndpointPath),
    request_body(content = MetadataBody, content_type = "application/json", description = "The new metadata: a JSON object"),
    responses(
        (status = 200, description = "The endpoint after the change", body = EndpointDto),
        (status = 400, description = "Not a JSON object, malformed JSON", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn put_metadata(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<EndpointDto>> {
    let Value::Object(metadata) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "metadata must be a JSON object",
        ));
    };
    let endpoint = epr.set_metadata(&path.id()?, &metadata, now()).await?;
    Ok(Json(EndpointDto::from(&endpoint)))
}

/// `POST /endpoints/{id}/tokens` answer: the token with its record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTokenDto {
    /// The token record.
    #[serde(flatten)]
    pub record: TokenDto,
    /// The token: keep it, it is not shown again.
    pub token: String,
}

/// Issue a token for an endpoint: the answer is the only time it is shown.
#[utoipa::path(
    post, path = "/api/v1/endpoints/{endpointId}/tokens", tag = "tokens",
    params(EndpointPath),
    responses(
        (status = 201, description = "Issued: keep `token`, it is not shown again", body = NewTokenDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn issue_token(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
) -> ApiResult<(StatusCode, Json<NewTokenDto>)> {
    let (record, token) = epr.issue_token(&path.id()?, now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenDto {
            record: TokenDto::from(&record),
            token: token.token,
        }),
    ))
}

/// An endpoint's tokens, oldest first: IDs and statuses, never a token or its hash.
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}/tokens", tag = "tokens",
    params(EndpointPath),
    responses(
        (status = 200, body = Vec<TokenDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
        (status = 404, description = "Not registered", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn list_tokens(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<EndpointPath>,
) -> ApiResult<Json<Vec<TokenDto>>> {
    let tokens = epr.tokens(&path.id()?).await?;
    Ok(Json(tokens.iter().map(TokenDto::from).collect()))
}

async fn set_token_status(
    epr: &Epr,
    path: TokenPath,
    target: TokenStatus,
) -> ApiResult<Json<TokenDto>> {
    let token = epr.set_token_status(&path.token_id, target, now()).await?;
    Ok(Json(TokenDto::from(&token)))
}

/// Suspend a token: devices cannot connect with it until it is reactivated.
#[utoipa::path(
    post, path = "/api/v1/tokens/{tokenId}/suspend", tag = "tokens",
    params(TokenPath),
    responses(
        (status = 200, description = "The token after the change (also when it was already suspended)", body = TokenDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "No such token", body = ErrorDto),
        (status = 409, description = "The token is revoked, which is final", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn suspend_token(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<TokenPath>,
) -> ApiResult<Json<TokenDto>> {
    set_token_status(&epr, path, TokenStatus::Suspended).await
}

/// Reactivate a suspended token.
#[utoipa::path(
    post, path = "/api/v1/tokens/{tokenId}/reactivate", tag = "tokens",
    params(TokenPath),
    responses(
        (status = 200, description = "The token after the change (also when it was already active)", body = TokenDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "No such token", body = ErrorDto),
        (status = 409, description = "The token is revoked, which is final", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn reactivate_token(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<TokenPath>,
) -> ApiResult<Json<TokenDto>> {
    set_token_status(&epr, path, TokenStatus::Active).await
}

/// Revoke a token for good (announced as `endpoint.token.revoked`: sessions that
/// used it are closed).
#[utoipa::path(
    post, path = "/api/v1/tokens/{tokenId}/revoke", tag = "tokens",
    params(TokenPath),
    responses(
        (status = 200, description = "The token after the change (also when it was already revoked)", body = TokenDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "No such token", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
async fn revoke_token(
    State(epr): State<Arc<Epr>>,
    Path(path): Path<TokenPath>,
) -> ApiResult<Json<TokenDto>> {
    set_token_status(&epr, path, TokenStatus::Revoked).await
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

/// The OpenAPI document of the register's REST API (served at
/// `/api/v1/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Kaa endpoint register", description = "Endpoints, app versions, metadata and endpoint tokens: provisioning for 16/ECAP token validation."),
    paths(
        register, register_batch, get_endpoint, unregister, put_app_version, put_metadata,
        issue_token, list_tokens, suspend_token, reactivate_token, revoke_token,
    ),
    components(schemas(
        EndpointDto, TokenDto, IssuedTokenDto, NewTokenDto, RegisterRequest, BatchRequest,
        BatchEntry, ProvisionedDto, BatchResultDto, AppVersionRequest, ErrorDto, TokenStatus,
    )),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// The OpenAPI 3.1 document as JSON.
pub fn openapi_json() -> Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null))
        .clone()
}

/// Where the OpenAPI document is served, under [`API_PREFIX`] (no authentication).
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The API's routes under [`API_PREFIX`], each with the one method it serves: the
/// router is built from this table (one entry per method; entries of one path are
/// merged), and the tests compare it with [`ApiDoc`]. [`OPENAPI_PATH`] is not in it.
fn api_routes() -> Vec<(Method, &'static str, MethodRouter<Arc<Epr>>)> {
    vec![
        (Method::POST, "/endpoints", post(register)),
        (Method::POST, "/endpoints/batch", post(register_batch)),
        (Method::GET, "/endpoints/{endpointId}", get(get_endpoint)),
        (
            Method::DELETE,
            "/endpoints/{endpointId}",
            delete(unregister),
        ),
        (
            Method::PUT,
            "/endpoints/{endpointId}/app-version",
            put(put_app_version),
        ),
        (
            Method::PUT,
            "/endpoints/{endpointId}/metadata",
            put(put_metadata),
        ),
        (
            Method::POST,
            "/endpoints/{endpointId}/tokens",
            post(issue_token),
        ),
        (
            Method::GET,
            "/endpoints/{endpointId}/tokens",
            get(list_tokens),
        ),
        (
            Method::POST,
            "/tokens/{tokenId}/suspend",
            post(suspend_token),
        ),
        (
            Method::POST,
            "/tokens/{tokenId}/reactivate",
            post(reactivate_token),
        ),
        (Method::POST, "/tokens/{tokenId}/revoke", post(revoke_token)),
    ]
}

/// Gives axum's own error answers (unknown route, 405, extractor rejections) the
/// `{"message"}` body, keeping their headers.
async fn normalise_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::NOT_FOUND => format!("no route for {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed on {path}"),
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
/// limit) with its OpenAPI document at `/api/v1/openapi.json`, `/health` and
/// `/metrics` (no authentication), and `{"message"}` errors everywhere.
pub fn app(epr: Arc<Epr>, auth: Authenticator, body_limit: usize, metrics: Metrics) -> Router {
    let auth = auth.with_realm("epr");
    let api = api_routes()
        .into_iter()
        .fold(Router::new(), |api, (_, path, route)| {
            api.route(path, route)
        })
        .route_layer(middleware::from_fn_with_state(auth, authenticate))
        .route_layer(middleware::from_fn_with_state(
            metrics.clone(),
            http_metrics,
        ))
        .route(OPENAPI_PATH, get(|| async { Json(openapi_json()) }))
        .with_state(epr);
    Router::new()
        .nest(API_PREFIX, api)
        .merge(ops_router(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(normalise_errors))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::core::Applications;
    use kaa_service::auth::Access;

    const METHODS: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];

    async fn test_app(dir: &tempfile::TempDir) -> Router {
        let url = format!("sqlite://{}", dir.path().join("epr.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let epr = Arc::new(Epr::new(store, Applications::open(), None));
        let auth = Authenticator::with_tokens([(
            "admin".to_owned(),
            "rw-token".to_owned(),
            Access::ReadWrite,
        )]);
        app(epr, auth, DEFAULT_BODY_LIMIT, Metrics::new("epr"))
    }

    /// `(method, path)` of every operation in the document, paths without the
    /// prefix.
    fn documented() -> BTreeSet<(String, String)> {
        let doc =
            oas3::from_json(openapi_json().to_string()).expect("a valid OpenAPI 3.1 document");
        assert!(doc.openapi.starts_with("3.1"), "{}", doc.openapi);
        let mut out = BTreeSet::new();
        for (path, item) in doc.paths.expect("paths") {
            let path = path
                .strip_prefix(API_PREFIX)
                .unwrap_or_else(|| panic!("{path} is outside {API_PREFIX}"))
                .to_owned();
            for (method, present) in [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
                ("HEAD", item.head.is_some()),
                ("OPTIONS", item.options.is_some()),
                ("TRACE", item.trace.is_some()),
            ] {
                if present {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    /// A concrete path for a route template.
    fn concrete(path: &str) -> String {
        path.replace("{endpointId}", "kettle-1")
            .replace("{tokenId}", "token-1")
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let served: BTreeSet<(String, String)> = api_routes()
            .into_iter()
            .map(|(method, path, _)| (method.to_string(), path.to_owned()))
            .collect();
        assert_eq!(served.len(), api_routes().len(), "a route is listed twice");
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not documented: {undocumented:?}"
        );
        assert!(
            not_served.is_empty(),
            "documented but not served: {not_served:?}"
        );
        assert_eq!(served.len(), 11);
    }

    /// The router itself, from outside, with a read-write token: each documented
    /// operation reaches its handler (whatever it answers, it is not 405 and not
    /// "no route"), and every other method on a documented path is 405. So the table
    /// the router is built from holds the methods it says.
    #[tokio::test]
    async fn every_documented_operation_is_routed_and_nothing_else_on_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let app = test_app(&dir).await;
        let documented = documented();
        let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
        for path in paths {
            let uri = format!("{API_PREFIX}{}", concrete(path));
            for method in METHODS {
                let response = app
                    .clone()
                    .oneshot(
                        Request::builder()
                            .method(method.clone())
                            .uri(&uri)
                            .header(header::AUTHORIZATION, "Bearer rw-token")
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let message = serde_json::from_slice::<Value>(&body).unwrap()["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if documented.contains(&(method.to_string(), path.clone())) {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
                    assert!(
                        !message.starts_with("no route"),
                        "{method} {uri}: {message}"
                    );
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
                }
            }
        }
        // And a path that is not documented is not served.
        let response = app
            .oneshot(
                Request::builder()
                    .method(Method::POST)
                    .uri(format!("{API_PREFIX}/tokens/token-1/destroy"))
                    .header(header::AUTHORIZATION, "Bearer rw-token")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    /// What schemathesis (`.ci/rest-fuzz.sh`) found the first document did not say:
    /// a batch needs an endpoint (`minItems: 1`, else 400), and one listed twice is
    /// a conflict (409, documented) rather than a 400 the document cannot express.
    #[tokio::test]
    async fn batch_refusals_the_document_describes() {
        let dir = tempfile::tempdir().unwrap();
        let app = test_app(&dir).await;
        let post = |body: Value| {
            Request::builder()
                .method(Method::POST)
                .uri(format!("{API_PREFIX}/endpoints/batch"))
                .header(header::AUTHORIZATION, "Bearer rw-token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let twice = serde_json::json!({"endpoints": [
            {"endpointId": "0", "appVersionName": "0"},
            {"endpointId": "0", "appVersionName": "0"},
        ]});
        let response = app.clone().oneshot(post(twice)).await.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let none = serde_json::json!({"endpoints": []});
        let response = app.oneshot(post(none)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let doc = openapi_json();
        let endpoints = &doc["components"]["schemas"]["BatchRequest"]["properties"]["endpoints"];
        assert_eq!(endpoints["minItems"], 1, "{endpoints}");
        let batch = &doc["paths"]["/api/v1/endpoints/batch"]["post"]["responses"];
        assert!(
            batch["409"]["description"]
                .as_str()
                .unwrap()
                .contains("listed twice")
        );
    }

    #[tokio::test]
    async fn the_document_is_served_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let app = test_app(&dir).await;
        let response = app
            .oneshot(
                Request::builder()
                    .uri(format!("{API_PREFIX}{OPENAPI_PATH}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, openapi_json());
    }

    /// Every schema the operations refer to is in the components, every operation
    /// needs the bearer token, and the name patterns are the one rule of
    /// `kaa_service::names` (ECR's document carries the same literal, and ECR's tests
    /// check it accepts exactly what the names accept).
    #[test]
    fn schemas_security_and_patterns() {
        let doc = openapi_json();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "EndpointDto",
            "TokenDto",
            "NewTokenDto",
            "RegisterRequest",
            "BatchRequest",
            "BatchEntry",
            "BatchResultDto",
            "AppVersionRequest",
            "ErrorDto",
            "TokenStatus",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        let text = doc.to_string();
        let mut start = 0;
        while let Some(at) = text[start..].find("\"$ref\":\"#/components/schemas/") {
            let from = start + at + "\"$ref\":\"#/components/schemas/".len();
            let end = from + text[from..].find('"').unwrap();
            assert!(
                schemas.contains_key(&text[from..end]),
                "{}",
                &text[from..end]
            );
            start = end;
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut operations = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                operations += 1;
                assert_eq!(operation["security"], serde_json::json!([{"bearer": []}]));
                assert!(operation["responses"]["401"].is_object());
            }
        }
        assert_eq!(operations, api_routes().len());
        let mut patterns = Vec::new();
        collect_patterns(&doc, &mut patterns);
        // endpointId in the 6 operations on an endpoint's path, and the 5 names in
        // the bodies (RegisterRequest, BatchEntry: 2 each; AppVersionRequest: 1).
        assert_eq!(patterns.len(), 11, "{patterns:?}");
        for pattern in patterns {
            assert_eq!(pattern, kaa_service::names::TOKEN_NAME_PATTERN);
        }
        assert_eq!(
            schemas["TokenStatus"]["enum"],
            serde_json::json!(["active", "suspended", "revoked"])
        );
    }

    fn collect_patterns(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "pattern"
                        && let Value::String(p) = v
                    {
                        out.push(p.clone());
                    }
                    collect_patterns(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
            _ => {}
        }
    }
}
