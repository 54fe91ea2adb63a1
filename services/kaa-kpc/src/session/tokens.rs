//! Token ownership: the endpoint tokens a session has used and the endpoints
//! behind them.
//!
//! A token resolves once per session and app version and is kept for the
//! session's lifetime. Deliveries name an endpoint, so the session also keeps,
//! per endpoint, the token it last used for it: a push goes to a topic with that
//! token, and an endpoint with no such token has no session here.

use std::collections::HashMap;
use std::sync::Arc;

/// An endpoint this session has used.
#[derive(Debug, Clone)]
pub(super) struct SessionEndpoint {
    pub(super) endpoint_id: Arc<str>,
    /// The app version the token was resolved for (and last used with).
    pub(super) app_version: Arc<str>,
}

#[derive(Debug, Default)]
pub(super) struct Tokens {
    /// Endpoint token → endpoint.
    by_token: HashMap<String, SessionEndpoint>,
    /// Endpoint ID → the token last used for it. Where it names a token, that
    /// token stands for this endpoint.
    by_endpoint: HashMap<Arc<str>, String>,
}

impl Tokens {
    /// Whether the session has used `token`.
    pub(super) fn contains(&self, token: &str) -> bool {
        self.by_token.contains_key(token)
    }

    /// How many tokens the session has used.
    pub(super) fn len(&self) -> usize {
        self.by_token.len()
    }

    /// The endpoint behind `token` when it was resolved for `app_version`.
    pub(super) fn cached(&self, token: &str, app_version: &str) -> Option<SessionEndpoint> {
        self.by_token
            .get(token)
            .filter(|e| &*e.app_version == app_version)
            .cloned()
    }

    /// Records what `token`, used under `app_version`, resolved to; it becomes
    /// the endpoint's token for pushes.
    pub(super) fn insert(
        &mut self,
        token: &str,
        app_version: &str,
        endpoint_id: &str,
    ) -> SessionEndpoint {
        let endpoint = SessionEndpoint {
            endpoint_id: endpoint_id.into(),
            app_version: app_version.into(),
        };
        if let Some(previous) = self.by_token.insert(token.to_owned(), endpoint.clone())
            && previous.endpoint_id != endpoint.endpoint_id
            && self
                .by_endpoint
                .get(&previous.endpoint_id)
                .is_some_and(|t| t == token)
        {
            self.by_endpoint.remove(&previous.endpoint_id);
        }
        self.by_endpoint
            .insert(Arc::clone(&endpoint.endpoint_id), token.to_owned());
        endpoint
    }

    /// Forgets every token that stands for `endpoint_id`.
    pub(super) fn forget_endpoint(&mut self, endpoint_id: &str) {
        self.by_token.retain(|_, e| &*e.endpoint_id != endpoint_id);
        self.by_endpoint.remove(endpoint_id);
    }

    /// The token last used for `endpoint_id` and the endpoint behind it.
    pub(super) fn for_endpoint(&self, endpoint_id: &str) -> Option<(&str, &SessionEndpoint)> {
        let token = self.by_endpoint.get(endpoint_id)?;
        let endpoint = self.by_token.get(token)?;
        Some((token, endpoint))
    }

    /// The endpoints behind the tokens (one per token).
    pub(super) fn endpoint_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_token.values().map(|e| &e.endpoint_id)
    }
}
