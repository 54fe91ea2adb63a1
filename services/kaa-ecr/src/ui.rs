//! The rollout page at [`UI_PATH`] (`/ui/`): app versions and their
//! configurations with how many endpoints applied or rejected each, and every
//! staged rollout's steps and counts as bars, refreshed every 1.5 s while it
//! runs, with pause / resume / promote / abort buttons.
//!
//! Plain HTML, CSS and JavaScript shipped in the binary (`include_str!`): no
//! build step, no CDN, no framework. The page itself needs no token; the data
//! comes from the REST API under `/api/v1` with the same bearer token as any
//! client (the page asks for it after a 401 and keeps it in the tab's
//! `sessionStorage`; with `auth.enabled: false` it never asks). Actions send
//! `If-Match` with the rollout's `ETag` from its last read, and every error
//! shows the API's `{"message"}`.
//!
//! The assets are served with a strict Content-Security-Policy (scripts,
//! styles and fetches from this origin only) and `Cache-Control: no-cache`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use tower::ServiceExt;
//! let app: axum::Router = kaa_ecr::ui::router();
//! let request = axum::http::Request::get("/ui/").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the page is served.
pub const UI_PATH: &str = "/ui/";

/// The page.
pub const INDEX_HTML: &str = include_str!("ui/index.html");
/// Its script.
pub const UI_JS: &str = include_str!("ui/ui.js");
/// Its style sheet.
pub const UI_CSS: &str = include_str!("ui/ui.css");

/// The Content-Security-Policy of the page: everything from this origin only,
/// no inline script or style, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// The page's routes: `/ui` (redirects to `/ui/`), `/ui/`, `/ui/ui.js`,
/// `/ui/ui.css`. No authentication: the page holds no data.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent(UI_PATH) }))
        .route(
            UI_PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/ui.js",
            get(|| async { asset("text/javascript; charset=utf-8", UI_JS) }),
        )
        .route(
            "/ui/ui.css",
            get(|| async { asset("text/css; charset=utf-8", UI_CSS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page links only its own assets, by paths relative to `/ui/`, and
    /// uses every REST route of the contract it depends on.
    #[test]
    fn page_is_self_contained() {
        assert!(INDEX_HTML.contains(r#"<script src="ui.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="ui.css">"#));
        for text in [INDEX_HTML, UI_JS, UI_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("<script>"), "no inline script");
        }
        assert!(!INDEX_HTML.contains("style="), "no inline style (CSP)");
        for route in [
            "'app-versions'",
            "'/status-counts?name='",
            "'/rollouts'",
            "'rollouts/'",
            "'If-Match'",
            "sessionStorage",
            "body.message",
        ] {
            assert!(UI_JS.contains(route), "ui.js uses {route}");
        }
        for action in ["'pause'", "'resume'", "'abort'"] {
            assert!(UI_JS.contains(action), "ui.js has {action}");
        }
    }
}
