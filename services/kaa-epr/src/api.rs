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
//!
//! An endpoint is `{"endpointId", "appVersionName", "metadata": {…}, "createdDate",
//! "updatedDate"}` (ISO-8601 UTC); a token is `{"tokenId", "endpointId", "status":
//! "active"|"suspended"|"revoked", "createdDate", "updatedDate"}`.
//!
//! Errors are `{"message"}`: invalid names, JSON or metadata that is not an object
//! (400), missing or unknown bearer token (401), read-only token on a write (403),
//! unknown endpoint or token (404), wrong method (405), already registered or a
//! revoked token moved (409), body too large (413), not JSON (415), store failure
//! (500). Authentication: [`kaa_service::auth`] (GET needs `read`, everything
//! else `read-write`). `/health` and `/metrics` need no token.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDto {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// Its app version.
    pub app_version_name: String,
    /// Its metadata (a JSON object).
    pub metadata: Metadata,
    /// When it was registered.
    pub created_date: String,
    /// When it last changed.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenDto {
    /// The token ID.
    pub token_id: String,
    /// The endpoint it identifies.
    pub endpoint_id: String,
    /// `active`, `suspended` or `revoked`.
    pub status: TokenStatus,
    /// When it was issued.
    pub created_date: String,
    /// When its status last changed.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenDto {
    /// The token ID.
    pub token_id: String,
    /// The token: keep it, it is not shown again.
    pub token: String,
}

/// `POST /endpoints` body, and one entry of a batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// Its app version.
    pub app_version_name: String,
    /// Its metadata: a JSON object (default `{}`).
    #[serde(default)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// The endpoints to register.
    pub endpoints: Vec<RegisterRequest>,
    /// Issue one token per endpoint (in the answer, shown once).
    #[serde(default)]
    pub issue_tokens: bool,
}

/// One endpoint of a batch answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultDto {
    /// How many endpoints were registered.
    pub registered: usize,
    /// Each of them, in request order.
    pub endpoints: Vec<ProvisionedDto>,
}

/// `PUT /endpoints/{id}/app-version` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppVersionRequest {
    /// The app version to move to.
    pub app_version_name: String,
}

type ApiResult<T> = Result<T, ApiError>;

fn endpoint_id(raw: String) -> ApiResult<EndpointId> {
    Ok(EndpointId::new(raw)?)
}

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

async fn get_endpoint(
    State(epr): State<Arc<Epr>>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointDto>> {
    Ok(Json(EndpointDto::from(
        &epr.endpoint(&endpoint_id(id)?).await?,
    )))
}

async fn unregister(State(epr): State<Arc<Epr>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    epr.unregister(&endpoint_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_app_version(
    State(epr): State<Arc<Epr>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AppVersionRequest>,
) -> ApiResult<Json<EndpointDto>> {
    let app = AppVersionName::new(body.app_version_name)?;
    let endpoint = epr.set_app_version(&endpoint_id(id)?, &app, now()).await?;
    Ok(Json(EndpointDto::from(&endpoint)))
}

async fn put_metadata(
    State(epr): State<Arc<Epr>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<EndpointDto>> {
    let Value::Object(metadata) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "metadata must be a JSON object",
        ));
    };
    let endpoint = epr
        .set_metadata(&endpoint_id(id)?, &metadata, now())
        .await?;
    Ok(Json(EndpointDto::from(&endpoint)))
}

/// `POST /endpoints/{id}/tokens` answer: the token with its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTokenDto {
    /// The token record.
    #[serde(flatten)]
    pub record: TokenDto,
    /// The token: keep it, it is not shown again.
    pub token: String,
}

async fn issue_token(
    State(epr): State<Arc<Epr>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<NewTokenDto>)> {
    let (record, token) = epr.issue_token(&endpoint_id(id)?, now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenDto {
            record: TokenDto::from(&record),
            token: token.token,
        }),
    ))
}

async fn list_tokens(
    State(epr): State<Arc<Epr>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<TokenDto>>> {
    let tokens = epr.tokens(&endpoint_id(id)?).await?;
    Ok(Json(tokens.iter().map(TokenDto::from).collect()))
}

async fn token_action(
    State(epr): State<Arc<Epr>>,
    Path((token_id, action)): Path<(String, String)>,
) -> ApiResult<Json<TokenDto>> {
    let target = match action.as_str() {
        "suspend" => TokenStatus::Suspended,
        "reactivate" => TokenStatus::Active,
        "revoke" => TokenStatus::Revoked,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no token action {other:?} (suspend, reactivate or revoke)"),
            ));
        }
    };
    let token = epr.set_token_status(&token_id, target, now()).await?;
    Ok(Json(TokenDto::from(&token)))
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
/// limit), `/health` and `/metrics` (no authentication), and `{"message"}` errors
/// everywhere.
pub fn app(epr: Arc<Epr>, auth: Authenticator, body_limit: usize, metrics: Metrics) -> Router {
    let auth = auth.with_realm("epr");
    let api = Router::new()
        .route("/endpoints", post(register))
        .route("/endpoints/batch", post(register_batch))
        .route(
            "/endpoints/{endpointId}",
            get(get_endpoint).delete(unregister),
        )
        .route("/endpoints/{endpointId}/app-version", put(put_app_version))
        .route("/endpoints/{endpointId}/metadata", put(put_metadata))
        .route(
            "/endpoints/{endpointId}/tokens",
            post(issue_token).get(list_tokens),
        )
        .route("/tokens/{tokenId}/{action}", post(token_action))
        .route_layer(middleware::from_fn_with_state(auth, authenticate))
        .route_layer(middleware::from_fn_with_state(
            metrics.clone(),
            http_metrics,
        ))
        .with_state(epr);
    Router::new()
        .nest(API_PREFIX, api)
        .merge(ops_router(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(normalise_errors))
}
