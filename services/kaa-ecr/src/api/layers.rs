//! REST routes of endpoint groups, layers, explain and dry runs (issue #20); see
//! [`crate::layers`] for the model and the parent module for the conventions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, ApiPath, ApiQuery, ApiState, AppVersionPath, DEFAULT_PAGE_SIZE, EndpointPath,
    ErrorDto, JsonBody, MAX_PAGE, MAX_PAGE_SIZE, NameQuery, parse_bounded,
};
use crate::core::{DRY_RUN_EXAMPLES, LayerChange, Prediction};
use crate::layers::{Decider, GroupName, Layer, LayerTarget};
use crate::model::{self, AppVersionName, ConfigName, EndpointId, Scope};

/// What a write answers with 200: what it stored, or, with `?dryRun=true`, a
/// [`DryRunDto`] (the OpenAPI document's `oneOf`; never built, only described).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum ConfigOrDryRun {
    /// The stored configuration.
    Stored(super::ConfigurationDto),
    /// The dry run's answer.
    DryRun(DryRunDto),
}

/// What a batch write answers with 200 (see [`ConfigOrDryRun`]).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum BatchOrDryRun {
    /// The batch's outcome.
    Stored(super::BatchResultDto),
    /// The dry run's answer.
    DryRun(DryRunDto),
}

/// What a layer write answers with 200 (see [`ConfigOrDryRun`]).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum LayerOrDryRun {
    /// The stored layer.
    Stored(LayerDto),
    /// The dry run's answer.
    DryRun(DryRunDto),
}

/// What a membership change answers with 200 (see [`ConfigOrDryRun`]).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum MembersOrDryRun {
    /// The change's counts.
    Changed(MembersResultDto),
    /// The dry run's answer.
    DryRun(DryRunDto),
}

/// `?dryRun=true`: predict the write, store and announce nothing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WriteQuery {
    /// The configuration name (7/CMP `^[a-zA-Z0-9_-]+$`, at most 256 characters);
    /// absent: `default`.
    #[param(pattern = "^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 256)]
    pub(super) name: Option<String>,
    /// `true`: answer what the write would change (a [`DryRunDto`]) and change
    /// nothing.
    #[serde(rename = "dryRun")]
    #[param(rename = "dryRun")]
    pub(super) dry_run: Option<bool>,
}

impl WriteQuery {
    pub(super) fn config_name(&self) -> Result<ConfigName, ApiError> {
        Ok(ConfigName::from_optional(self.name.as_deref())?)
    }

    pub(super) fn dry(&self) -> bool {
        self.dry_run == Some(true)
    }
}

/// `?dryRun=true` alone.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DryRunQuery {
    /// `true`: answer what the write would change and change nothing.
    #[serde(rename = "dryRun")]
    #[param(rename = "dryRun")]
    dry_run: Option<bool>,
}

/// Page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Zero-based page number (default 0).
    #[param(value_type = Option<u32>, maximum = 1_000_000)]
    page: Option<String>,
    /// Page size, 1 to 1000 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    size: Option<String>,
}

impl PageQuery {
    fn get(&self) -> Result<(u32, u32), ApiError> {
        Ok((
            parse_bounded(self.page.as_deref(), "page", 0, 0, MAX_PAGE)?,
            parse_bounded(
                self.size.as_deref(),
                "size",
                DEFAULT_PAGE_SIZE,
                1,
                MAX_PAGE_SIZE,
            )?,
        ))
    }
}

/// A group path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct GroupPath {
    /// Application version name.
    #[serde(rename = "appVersionName")]
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    app_version_name: String,
    /// Group name (`^[a-zA-Z0-9_-]+$`, at most 256 characters).
    #[serde(rename = "groupName")]
    #[param(pattern = "^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 256)]
    group_name: String,
}

impl GroupPath {
    fn parse(&self) -> Result<(AppVersionName, GroupName), ApiError> {
        Ok((
            AppVersionName::new(self.app_version_name.as_str())?,
            GroupName::new(self.group_name.as_str())?,
        ))
    }
}

/// A layer path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct LayerPath {
    /// Application version name.
    #[serde(rename = "appVersionName")]
    #[param(
        pattern = r"^[^.*>/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$",
        min_length = 1
    )]
    app_version_name: String,
    /// Layer name (`^[a-zA-Z0-9_-]+$`, at most 256 characters).
    #[serde(rename = "layerName")]
    #[param(pattern = "^[a-zA-Z0-9_-]+$", min_length = 1, max_length = 256)]
    layer_name: String,
}

impl LayerPath {
    fn parse(&self) -> Result<(AppVersionName, GroupName), ApiError> {
        Ok((
            AppVersionName::new(self.app_version_name.as_str())?,
            GroupName::new(self.layer_name.as_str())?,
        ))
    }
}

/// An endpoint group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupDto {
    /// The group's name.
    pub group: String,
    /// How many members it has.
    pub members: u64,
    /// When it was created (ISO-8601 UTC).
    pub created_date: String,
}

/// One page of groups.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupPageDto {
    /// The groups, by name.
    pub content: Vec<GroupDto>,
    /// How many groups there are.
    pub total_elements: u64,
    /// This page's number (zero-based).
    pub number: u32,
    /// The page size.
    pub size: u32,
}

/// One page of a group's members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberPageDto {
    /// Endpoint IDs, ordered.
    pub content: Vec<String>,
    /// How many members there are.
    pub total_elements: u64,
    /// This page's number (zero-based).
    pub number: u32,
    /// The page size.
    pub size: u32,
}

/// `POST …/groups/{groupName}/members` body: endpoints to add and to remove (one
/// in both ends up removed), at most 10,000 in all.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MembersRequest {
    /// Endpoint IDs to add.
    #[serde(default)]
    #[schema(schema_with = endpoint_ids_schema)]
    pub add: Vec<String>,
    /// Endpoint IDs to remove.
    #[serde(default)]
    #[schema(schema_with = endpoint_ids_schema)]
    pub remove: Vec<String>,
}

/// A list of endpoint IDs, as ECR validates them.
fn endpoint_ids_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some(super::TOKEN_NAME_PATTERN)),
        )
        // No maxItems: 10,000 IDs (the most add and remove may name together) are
        // refused with 400, but a longer list is past the body limit first (413),
        // which a JSON Schema bound cannot say.
        .build()
}

/// A group name, or null (every endpoint).
fn group_target_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::SchemaType;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .min_length(Some(1))
        .max_length(Some(256))
        .pattern(Some("^[a-zA-Z0-9_-]+$"))
        .build()
}

/// The answer of a membership change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembersResultDto {
    /// Memberships added.
    pub added: u64,
    /// Memberships removed.
    pub removed: u64,
    /// Endpoints whose effective configuration changed (and were announced).
    pub changed: u64,
}

/// The largest priority magnitude: 2^53 − 1, the integers a JSON number holds exactly
/// in every client (JavaScript's safe integers, the rollout page's among them).
const MAX_PRIORITY: i64 = (1 << 53) - 1;

/// A priority: a JSON integer from −[`MAX_PRIORITY`] to [`MAX_PRIORITY`], also
/// written as a number with no fractional part (`-8219.0`, which JSON Schema calls
/// an integer too; schemathesis sends such).
fn whole_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Visitor;
    fn in_range<E: serde::de::Error>(v: i64) -> Result<i64, E> {
        if (-MAX_PRIORITY..=MAX_PRIORITY).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "{v} is outside -{MAX_PRIORITY}..={MAX_PRIORITY}"
            )))
        }
    }
    impl serde::de::Visitor<'_> for Visitor {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            in_range(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            in_range(i64::try_from(v).unwrap_or(i64::MAX))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // Below 2^53 every whole f64 is the integer its text said.
            if v.fract() == 0.0 && v.abs() <= MAX_PRIORITY as f64 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!(
                    "{v} is not a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY}"
                )))
            }
        }
    }
    d.deserialize_any(Visitor)
}

/// `PUT …/layers/{layerName}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerRequest {
    /// Merge order: ascending; ties by layer name (the name sorting last wins).
    #[serde(deserialize_with = "whole_i64")]
    #[schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)]
    pub priority: i64,
    /// The target group; absent or null: every endpoint of the app version.
    #[serde(default)]
    #[schema(schema_with = group_target_schema)]
    pub group: Option<String>,
    /// The JSON Merge Patch (RFC 7396), an object.
    #[schema(value_type = Object)]
    pub patch: Value,
}

/// A layer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LayerDto {
    /// The configuration name it layers.
    pub name: String,
    /// The layer's name.
    pub layer_name: String,
    /// Merge order (ascending; ties by layer name).
    pub priority: i64,
    /// The target group; null: every endpoint.
    pub group: Option<String>,
    /// The JSON Merge Patch.
    #[schema(value_type = Object)]
    pub patch: Value,
    /// When it was created (ISO-8601 UTC).
    pub created_date: String,
    /// When it last changed (ISO-8601 UTC).
    pub updated_date: String,
}

impl From<&Layer> for LayerDto {
    fn from(l: &Layer) -> Self {
        Self {
            name: l.name.clone(),
            layer_name: l.layer_name.clone(),
            priority: l.priority,
            group: match &l.target {
                LayerTarget::All => None,
                LayerTarget::Group(g) => Some(g.clone()),
            },
            patch: l.patch.clone(),
            created_date: model::format_iso8601(l.created),
            updated_date: model::format_iso8601(l.updated),
        }
    }
}

/// One changed endpoint of a dry run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunChangeDto {
    /// The endpoint.
    pub endpoint_id: String,
    /// The configuration name.
    pub name: String,
    /// Its effective config ID now (null: none).
    pub before_config_id: Option<String>,
    /// After the write (null: none).
    pub after_config_id: Option<String>,
    /// RFC 6902 JSON Patch from the effective configuration now to the one after.
    #[schema(value_type = Vec<Object>)]
    pub patch: Value,
}

/// The JSON Schema verdict on one would-be document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaVerdictDto {
    /// The would-be document's config ID.
    pub config_id: String,
    /// How many changed endpoints would get it.
    pub endpoints: u64,
    /// Whether it satisfies the app version's schema (true when it has none).
    pub valid: bool,
    /// The first violation, when not valid.
    pub violation: Option<String>,
}

/// The answer of a dry run: nothing was stored or announced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunDto {
    /// Always true.
    pub dry_run: bool,
    /// How many endpoints' effective configurations would change.
    pub changed: u64,
    /// The first few of them (by endpoint ID) with their JSON Patch.
    pub examples: Vec<DryRunChangeDto>,
    /// The schema verdict on each distinct would-be document.
    pub schema: Vec<SchemaVerdictDto>,
}

pub(super) fn dry_run_response(
    state: &ApiState,
    app: &AppVersionName,
    prediction: &Prediction,
) -> Response {
    dry_run_many(state, &[(app, prediction)])
}

/// The [`DryRunDto`] of predictions over several app versions (a batch write): the
/// changes in the order given, and each distinct would-be document's verdict under
/// the schema of every app version it would reach (one entry per config ID; not
/// valid when one of those schemas refuses it).
pub(super) fn dry_run_many(state: &ApiState, parts: &[(&AppVersionName, &Prediction)]) -> Response {
    let changes = parts.iter().flat_map(|(_, p)| p.changes.iter());
    let examples = changes
        .clone()
        .take(DRY_RUN_EXAMPLES)
        .map(|c| DryRunChangeDto {
            endpoint_id: c.endpoint_id.to_string(),
            name: c.name.to_string(),
            before_config_id: c.before.as_ref().map(|b| b.config_id.clone()),
            after_config_id: c.after.as_ref().map(|a| a.config_id.clone()),
            patch: crate::layers::json_patch_between(
                c.before.as_ref().map(|b| b.content.as_str()),
                c.after.as_ref().map(|a| a.content.as_str()),
            ),
        })
        .collect();
    let mut schema: Vec<SchemaVerdictDto> = Vec::new();
    for (app, prediction) in parts {
        for v in prediction.verdicts(&state.ecr, app) {
            match schema.iter_mut().find(|s| s.config_id == v.config_id) {
                Some(s) => {
                    s.endpoints += v.endpoints;
                    if s.violation.is_none() && v.violation.is_some() {
                        s.valid = false;
                        s.violation = v.violation;
                    }
                }
                None => schema.push(SchemaVerdictDto {
                    config_id: v.config_id,
                    endpoints: v.endpoints,
                    valid: v.violation.is_none(),
                    violation: v.violation,
                }),
            }
        }
    }
    Json(DryRunDto {
        dry_run: true,
        changed: changes.count() as u64,
        examples,
        schema,
    })
    .into_response()
}

/// Dry run of a write of a configuration (`config`; `None`: a delete) in `scope`.
pub(super) async fn dry_run_config(
    state: &ApiState,
    scope: &Scope,
    name: &ConfigName,
    config: Option<&Value>,
) -> Result<Response, ApiError> {
    let prediction = match scope {
        Scope::Default { app_version } => {
            state.ecr.predict_default(app_version, name, config).await?
        }
        Scope::Endpoint {
            endpoint_id,
            app_version,
        } => {
            state
                .ecr
                .predict_endpoint(endpoint_id, app_version, name, config)
                .await?
        }
    };
    Ok(dry_run_response(state, scope.app_version(), &prediction))
}

/// Dry run of a write of an endpoint's own configuration as a merge patch.
pub(super) async fn dry_run_patch(
    state: &ApiState,
    scope: &Scope,
    name: &ConfigName,
    patch: &Value,
) -> Result<Response, ApiError> {
    let Scope::Endpoint {
        endpoint_id,
        app_version,
    } = scope
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "only an endpoint's own configuration can be stored as a merge patch",
        ));
    };
    let prediction = state
        .ecr
        .predict_endpoint_patch(endpoint_id, app_version, name, patch)
        .await?;
    Ok(dry_run_response(state, app_version, &prediction))
}

fn group_dto(g: &crate::store::GroupSummary) -> GroupDto {
    GroupDto {
        group: g.group.clone(),
        members: g.members,
        created_date: model::format_iso8601(g.created),
    }
}

/// Create an endpoint group (idempotent).
#[utoipa::path(
    put, path = "/api/v1/app-versions/{appVersionName}/groups/{groupName}",
    tag = "groups and layers",
    params(GroupPath),
    responses(
        (status = 201, description = "Created"),
        (status = 204, description = "It existed already"),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn put_group(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<GroupPath>,
) -> Result<Response, ApiError> {
    let (app, group) = path.parse()?;
    let created = state.ecr.create_group(&app, &group, model::now()).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

/// Delete an endpoint group (409 while a layer targets it).
#[utoipa::path(
    delete, path = "/api/v1/app-versions/{appVersionName}/groups/{groupName}",
    tag = "groups and layers",
    params(GroupPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, body = ErrorDto),
        (status = 409, description = "A layer targets the group", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_group(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<GroupPath>,
) -> Result<Response, ApiError> {
    let (app, group) = path.parse()?;
    if state.ecr.delete_group(&app, &group).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(no_group(&app, &group))
    }
}

fn no_group(app: &AppVersionName, group: &GroupName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint group {group} in application version {app}"),
    )
}

/// The groups of an app version, by name.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/groups",
    tag = "groups and layers",
    params(AppVersionPath, PageQuery),
    responses(
        (status = 200, body = GroupPageDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_groups(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let app = AppVersionName::new(path.app_version_name.as_str())?;
    let (page, size) = query.get()?;
    let p = state.ecr.groups(&app, page, size).await?;
    Ok(Json(GroupPageDto {
        content: p.content.iter().map(group_dto).collect(),
        total_elements: p.total_elements,
        number: page,
        size,
    })
    .into_response())
}

/// The members of a group, by endpoint ID.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/groups/{groupName}/members",
    tag = "groups and layers",
    params(GroupPath, PageQuery),
    responses(
        (status = 200, body = MemberPageDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_members(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<GroupPath>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let (app, group) = path.parse()?;
    let (page, size) = query.get()?;
    let p = state
        .ecr
        .group_members(&app, &group, page, size)
        .await?
        .ok_or_else(|| no_group(&app, &group))?;
    Ok(Json(MemberPageDto {
        content: p.content,
        total_elements: p.total_elements,
        number: page,
        size,
    })
    .into_response())
}

/// Add and remove members of a group in one batch (`?dryRun=true`: predict only).
#[utoipa::path(
    post, path = "/api/v1/app-versions/{appVersionName}/groups/{groupName}/members",
    tag = "groups and layers",
    params(GroupPath, DryRunQuery),
    request_body(content = MembersRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed (or, with dryRun, a DryRunDto)", body = MembersOrDryRun),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, body = ErrorDto), (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn post_members(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<GroupPath>,
    ApiQuery(query): ApiQuery<DryRunQuery>,
    JsonBody(body): JsonBody<MembersRequest>,
) -> Result<Response, ApiError> {
    let (app, group) = path.parse()?;
    let parse = |ids: &[String]| -> Result<Vec<EndpointId>, ApiError> {
        ids.iter()
            .map(|e| EndpointId::new(e.as_str()).map_err(ApiError::from))
            .collect()
    };
    let (add, remove) = (parse(&body.add)?, parse(&body.remove)?);
    let dry = query.dry_run == Some(true);
    let ((added, removed), prediction) = state
        .ecr
        .change_members(&app, &group, &add, &remove, dry, model::now())
        .await
        .map_err(not_found_group)?;
    if dry {
        return Ok(dry_run_response(&state, &app, &prediction));
    }
    Ok(Json(MembersResultDto {
        added,
        removed,
        changed: prediction.changes.len() as u64,
    })
    .into_response())
}

fn not_found_group(e: crate::core::EcrError) -> ApiError {
    match e {
        crate::core::EcrError::Store(crate::store::StoreError::NotFound(m)) => {
            ApiError::new(StatusCode::NOT_FOUND, m)
        }
        other => other.into(),
    }
}

/// The layers of an app version (of one configuration name, or of all), in merge
/// order per name.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/layers",
    tag = "groups and layers",
    params(AppVersionPath, NameQuery),
    responses(
        (status = 200, body = Vec<LayerDto>),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_layers(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<AppVersionPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let app = AppVersionName::new(path.app_version_name.as_str())?;
    let name = query.name.as_deref().map(ConfigName::new).transpose()?;
    let layers = state.ecr.layers(&app, name.as_ref()).await?;
    Ok(Json(layers.iter().map(LayerDto::from).collect::<Vec<_>>()).into_response())
}

/// Read one layer of configuration `name`.
#[utoipa::path(
    get, path = "/api/v1/app-versions/{appVersionName}/layers/{layerName}",
    tag = "groups and layers",
    params(LayerPath, NameQuery),
    responses(
        (status = 200, body = LayerDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_layer(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<LayerPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let (app, layer_name) = path.parse()?;
    let name = query.config_name()?;
    state
        .ecr
        .layers(&app, Some(&name))
        .await?
        .iter()
        .find(|l| l.layer_name == layer_name.as_str())
        .map(|l| Json(LayerDto::from(l)).into_response())
        .ok_or_else(|| no_layer(&app, &name, &layer_name))
}

fn no_layer(app: &AppVersionName, name: &ConfigName, layer: &GroupName) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no layer {layer} of configuration {name} of app version {app}"),
    )
}

/// Create or replace a layer of configuration `name` (`?dryRun=true`: predict only).
#[utoipa::path(
    put, path = "/api/v1/app-versions/{appVersionName}/layers/{layerName}",
    tag = "groups and layers",
    params(LayerPath, WriteQuery),
    request_body(content = LayerRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (or, with dryRun, a DryRunDto)", body = LayerOrDryRun),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "The target group does not exist", body = ErrorDto),
        (status = 409, description = "A rollout of this layer is active", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn put_layer(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<LayerPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
    JsonBody(body): JsonBody<LayerRequest>,
) -> Result<Response, ApiError> {
    let (app, layer_name) = path.parse()?;
    let name = query.config_name()?;
    let target = match body.group {
        None => LayerTarget::All,
        Some(g) => LayerTarget::Group(GroupName::new(g)?.to_string()),
    };
    let now = model::now();
    let layer = Layer {
        app_version: app.to_string(),
        name: name.to_string(),
        layer_name: layer_name.to_string(),
        priority: body.priority,
        target,
        patch: body.patch,
        created: now,
        updated: now,
    };
    let (_, prediction) = state
        .ecr
        .write_layer(
            &app,
            &name,
            LayerChange::Put(layer.clone()),
            query.dry(),
            now,
        )
        .await
        .map_err(not_found_group)?;
    if query.dry() {
        return Ok(dry_run_response(&state, &app, &prediction));
    }
    let stored = state
        .ecr
        .layers(&app, Some(&name))
        .await?
        .into_iter()
        .find(|l| l.layer_name == layer.layer_name)
        .unwrap_or(layer);
    Ok(Json(LayerDto::from(&stored)).into_response())
}

/// Delete a layer of configuration `name` (`?dryRun=true`: predict only).
#[utoipa::path(
    delete, path = "/api/v1/app-versions/{appVersionName}/layers/{layerName}",
    tag = "groups and layers",
    params(LayerPath, WriteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 200, description = "With dryRun: what it would change", body = DryRunDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, body = ErrorDto),
        (status = 409, description = "A rollout of this layer is active", body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete_layer(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<LayerPath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
) -> Result<Response, ApiError> {
    let (app, layer_name) = path.parse()?;
    let name = query.config_name()?;
    let (previous, prediction) = state
        .ecr
        .write_layer(
            &app,
            &name,
            LayerChange::Delete(layer_name.clone()),
            query.dry(),
            model::now(),
        )
        .await?;
    if previous.is_none() {
        return Err(no_layer(&app, &name, &layer_name));
    }
    if query.dry() {
        return Ok(dry_run_response(&state, &app, &prediction));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One leaf of an explanation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedDto {
    /// The RFC 6901 pointer of the leaf (`""`: the whole document).
    pub pointer: String,
    /// Its value (any JSON).
    #[schema(value_type = Value)]
    pub value: Value,
    /// `default`, `rollout`, `layer`, `endpoint` (its own whole configuration) or
    /// `endpoint-patch` (its own configuration stored as a merge patch).
    pub source: String,
    /// The layer, when `source` is `layer`.
    pub layer: Option<String>,
    /// The rollout, when `source` is `rollout`, or `layer` and the layer's new
    /// version is served to this endpoint by a layer rollout.
    pub rollout_id: Option<String>,
    /// The rollout's current step (zero-based), when `rolloutId` is given.
    pub step: Option<u64>,
}

/// An endpoint's effective configuration explained.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExplainDto {
    /// The effective configuration.
    pub configuration: super::ConfigurationDto,
    /// Every leaf with the source that decided it; set in order, they rebuild it.
    pub leaves: Vec<ExplainedDto>,
}

/// Explain an endpoint's effective configuration: for every JSON Pointer (leaf),
/// the source that decided it.
#[utoipa::path(
    get, path = "/api/v1/endpoints/{endpointId}/app-versions/{appVersionName}/explain",
    tag = "groups and layers",
    params(EndpointPath, NameQuery),
    responses(
        (status = 200, body = ExplainDto),
        (status = 400, body = ErrorDto), (status = 401, body = ErrorDto), (status = 404, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_explain(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<EndpointPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
) -> Result<Response, ApiError> {
    let name = query.config_name()?;
    let endpoint_id = EndpointId::new(path.endpoint_id.as_str())?;
    let app_version = AppVersionName::new(path.app_version_name.as_str())?;
    let e = state.ecr.explain(&endpoint_id, &app_version, &name).await?;
    let Some(config) = &e.effective else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "endpoint {endpoint_id} has no effective configuration named {name} in app version {app_version}"
            ),
        ));
    };
    let leaves = e
        .leaves
        .into_iter()
        .map(|l| {
            let (source, layer, rollout_id, step) = match l.decider {
                Decider::Default => ("default", None, None, None),
                Decider::Endpoint => ("endpoint", None, None, None),
                Decider::EndpointPatch => ("endpoint-patch", None, None, None),
                Decider::Layer(n) => ("layer", Some(n), None, None),
                Decider::RollingLayer {
                    layer_name,
                    rollout_id,
                    step,
                } => (
                    "layer",
                    Some(layer_name),
                    Some(rollout_id),
                    Some(step as u64),
                ),
                Decider::Rollout { rollout_id, step } => {
                    ("rollout", None, Some(rollout_id), Some(step as u64))
                }
            };
            ExplainedDto {
                pointer: l.pointer,
                value: l.value,
                source: source.to_owned(),
                layer,
                rollout_id,
                step,
            }
        })
        .collect();
    Ok(Json(ExplainDto {
        configuration: config.into(),
        leaves,
    })
    .into_response())
}

/// `POST …/layers/{layerName}/rollouts` body: the layer's new version (as a
/// `PUT …/layers/{layerName}` body) and the rollout's steps, gate and abort
/// criteria (as a default's rollout).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerRolloutRequest {
    /// The new version's priority.
    #[serde(deserialize_with = "whole_i64")]
    #[schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)]
    pub priority: i64,
    /// The new version's target group; absent or null: every endpoint.
    #[serde(default)]
    #[schema(schema_with = group_target_schema)]
    pub group: Option<String>,
    /// The new version's JSON Merge Patch (RFC 7396), an object.
    #[schema(value_type = Object)]
    pub patch: Value,
    /// Cumulative percentages of the app version's endpoints, as for a default's
    /// rollout.
    #[schema(schema_with = super::steps_schema)]
    pub steps: Vec<f64>,
    /// The gate of every step.
    pub gate: crate::rollout::Gate,
    /// The abort criteria.
    pub abort: crate::rollout::AbortCriteria,
    /// What an abort does (`revert`: everyone back on the layer as stored).
    pub on_abort: crate::rollout::OnAbort,
}

/// Begin a staged rollout of a new version of a layer of configuration `name`
/// (see [`crate::core`]'s layer rollouts): endpoints in the current step's cohort
/// get the new version, the others keep the layer as stored; completing it
/// stores the new version. Follow and act on it under `/rollouts/{rolloutId}`.
#[utoipa::path(
    post, path = "/api/v1/app-versions/{appVersionName}/layers/{layerName}/rollouts",
    tag = "rollouts",
    params(LayerPath, NameQuery),
    request_body(content = LayerRolloutRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Begun: the first step's endpoints whose effective configuration changes are announced it", body = super::RolloutDto,
            headers(("ETag" = String, description = "\"<rolloutId>-<revision>\""), ("Location" = String, description = "/api/v1/rollouts/<rolloutId>"))),
        (status = 400, description = "Invalid name or body", body = ErrorDto),
        (status = 401, body = ErrorDto), (status = 403, body = ErrorDto),
        (status = 404, description = "The target group does not exist", body = ErrorDto),
        (status = 409, description = "A rollout of this layer is active, or the layer is this version already", body = ErrorDto),
        (status = 413, body = ErrorDto), (status = 415, body = ErrorDto),
    ),
    security(("bearer" = []))
)]
pub(super) async fn post_layer_rollout(
    State(state): State<ApiState>,
    ApiPath(path): ApiPath<LayerPath>,
    ApiQuery(query): ApiQuery<NameQuery>,
    JsonBody(body): JsonBody<LayerRolloutRequest>,
) -> Result<Response, ApiError> {
    let (app, layer_name) = path.parse()?;
    let name = query.config_name()?;
    let group = body.group.map(GroupName::new).transpose()?;
    let version = crate::core::LayerVersion {
        layer_name,
        priority: body.priority,
        group,
    };
    let spec = crate::core::RolloutSpec {
        config: body.patch,
        steps: body.steps,
        gate: body.gate,
        abort: body.abort,
        on_abort: body.on_abort,
    };
    let now = model::now();
    let r = state
        .ecr
        .create_layer_rollout(&app, &name, &version, &spec, now)
        .await
        .map_err(not_found_group)?;
    let live = state.ecr.rollout_counts(&r, now).await.ok();
    let mut response = super::rollout_response(StatusCode::CREATED, &r, live);
    if let Ok(location) = axum::http::HeaderValue::from_str(&format!(
        "{}/rollouts/{}",
        super::API_PREFIX,
        r.rollout_id
    )) {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A priority written as a whole number with `.0` is that integer (REST fuzzing
    /// sent `-8219.0` to the layer rollout route and got a 400); a fraction is not.
    #[test]
    fn priorities_are_whole_numbers_however_written() {
        let layer = |p: &str| {
            serde_json::from_str::<LayerRequest>(&format!(r#"{{"priority":{p},"patch":{{}}}}"#))
                .map(|l| l.priority)
                .map_err(|e| e.to_string())
        };
        assert_eq!(layer("-8219.0"), Ok(-8219));
        assert_eq!(layer("7"), Ok(7));
        assert_eq!(layer("-9007199254740991"), Ok(-MAX_PRIORITY));
        assert_eq!(layer("9007199254740991.0"), Ok(MAX_PRIORITY));
        assert!(layer("1.5").is_err());
        // Outside the documented range, however written (REST fuzzing sent
        // -9223372036854775809, which an f64 rounds to i64::MIN).
        assert!(layer("9007199254740992").is_err());
        assert!(layer("-9223372036854775808").is_err());
        assert!(layer("-9223372036854775809").is_err());
        assert!(layer("9223372036854775808").is_err());
        assert!(layer("1e300").is_err());
        assert!(layer("\"1\"").is_err());
        let rollout = serde_json::from_str::<LayerRolloutRequest>(
            r#"{"priority":-8219.0,"patch":{},"steps":[50,100],
                "gate":{"minAppliedPercent":0,"minApplied":0,"soakSeconds":0},
                "abort":{"maxRejectedPercent":50,"minSample":1,"reportTimeoutSeconds":60},
                "onAbort":"halt"}"#,
        )
        .expect("a layer rollout with a priority written -8219.0");
        assert_eq!(rollout.priority, -8219);
    }
}
