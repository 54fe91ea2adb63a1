//! A fake 6/CDTP configuration provider: a store that only moves forward,
//! answering by kaa-cdtp's rules.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use kaa_cdtp::{APPLICATION_JSON, ConfigRequest, ConfigResponse, ConfigUpdated, Current};
use kaa_ism::UnixMillis;

use crate::resource::canonical_config_name;

/// (endpoint, app version, canonical configuration name).
type Key = (String, String, Option<String>);

fn key(endpoint_id: &str, app_version_name: &str, name: Option<&str>) -> Key {
    (
        endpoint_id.to_owned(),
        app_version_name.to_owned(),
        canonical_config_name(name).map(str::to_owned),
    )
}

/// How the provider says "no configuration".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AbsentForm {
    /// A 404 ("no configuration"), the form a provider may send and ECR does not.
    #[default]
    NotFound,
    /// A 200 with `configId` `""` and content `null`
    /// ([`kaa_cdtp::answer::ABSENT_CONFIG_ID`]), ECR's form.
    EmptyId,
}

/// A fake configuration provider (ECR) for tests, benchmarks and fuzz targets,
/// on simulated time.
///
/// - **Store**: endpoint-specific configurations per endpoint, app version and
///   configuration name (`None` and `Some("default")` are the same one). IDs
///   are `cfg-<n>` in creation order; the store only moves forward, and
///   [`FakeProvider::order`] tells a test the order the engine must not rely on.
/// - **Answers** follow kaa-cdtp's rules ([`ConfigResponse::answer`]): the
///   configuration, "unchanged" when the request names the current one, or "no
///   configuration" in the [`AbsentForm`] it is told.
/// - **Told to misbehave**: every answer an error ([`FakeProvider::fail_with`]),
///   or late ([`FakeProvider::delay`] with [`FakeProvider::receive`] and
///   [`FakeProvider::poll_answer`]; a late answer says what the store holds when
///   it goes out).
///
/// ```
/// use kaa_cdtp::{ConfigAnswer, ConfigRequest};
/// use kaa_cmp::test_support::FakeProvider;
/// use kaa_ism::UnixMillis;
///
/// let mut provider = FakeProvider::new();
/// let updated = provider.set("ep-1", "kettle-v1", None, r#"{"rate":5}"#);
/// assert_eq!(updated.config_id, "cfg-1");
/// let request = ConfigRequest {
///     correlation_id: "c-1".into(),
///     app_version_name: "kettle-v1".into(),
///     endpoint_id: "ep-1".into(),
///     ..Default::default()
/// };
/// let answer = provider.answer(&request, UnixMillis(0));
/// assert_eq!(
///     answer.read(None),
///     ConfigAnswer::Config { config_id: "cfg-1", content: br#"{"rate":5}"# }
/// );
/// provider.fail_with(503, "busy");
/// assert_eq!(provider.answer(&request, UnixMillis(0)).status_code, 503);
/// ```
#[derive(Debug, Default)]
pub struct FakeProvider {
    store: HashMap<Key, (String, Vec<u8>)>,
    created: Vec<String>,
    absent: AbsentForm,
    failure: Option<(i32, String)>,
    delay_ms: i64,
    held: VecDeque<(UnixMillis, ConfigRequest<'static>)>,
    answered: usize,
}

impl FakeProvider {
    /// An empty store that answers at once, 404 for "no configuration".
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a new configuration (ID `cfg-<n>`) and returns the
    /// `ConfigUpdated` broadcast announcing it (timestamp 0: set it if the
    /// test needs one), with `name` as the caller spelled it.
    pub fn set(
        &mut self,
        endpoint_id: &str,
        app_version_name: &str,
        name: Option<&str>,
        content: impl AsRef<[u8]>,
    ) -> ConfigUpdated<'static> {
        let id = format!("cfg-{}", self.created.len() + 1);
        self.set_with_id(endpoint_id, app_version_name, name, &id, content)
    }

    /// [`FakeProvider::set`] with the config ID the caller gives, e.g. the
    /// content hash ECR derives ([`crate::canonical::config_id_of`]) for a
    /// device that verifies patched configurations. [`FakeProvider::order`]
    /// knows only `cfg-<n>` IDs.
    pub fn set_with_id(
        &mut self,
        endpoint_id: &str,
        app_version_name: &str,
        name: Option<&str>,
        config_id: &str,
        content: impl AsRef<[u8]>,
    ) -> ConfigUpdated<'static> {
        let n = self.created.len() + 1;
        let id = config_id.to_owned();
        let content = content.as_ref().to_vec();
        self.created.push(id.clone());
        self.store.insert(
            key(endpoint_id, app_version_name, name),
            (id.clone(), content.clone()),
        );
        ConfigUpdated {
            correlation_id: format!("upd-{n}").into(),
            timestamp: 0,
            timeout: 0,
            app_version_name: app_version_name.to_owned().into(),
            endpoint_id: endpoint_id.to_owned().into(),
            config_id: id.into(),
            content_type: APPLICATION_JSON.into(),
            content: content.into(),
            originator_replica_id: Some("ecr-1".into()),
            config_name: name.map(|n| n.to_owned().into()),
        }
    }

    /// What the store holds for an endpoint, app version and name.
    pub fn get(
        &self,
        endpoint_id: &str,
        app_version_name: &str,
        name: Option<&str>,
    ) -> Current<'_> {
        match self.store.get(&key(endpoint_id, app_version_name, name)) {
            Some((config_id, content)) => Current::Config { config_id, content },
            None => Current::Absent,
        }
    }

    /// The ID of the current configuration, if any.
    pub fn current(
        &self,
        endpoint_id: &str,
        app_version_name: &str,
        name: Option<&str>,
    ) -> Option<&str> {
        match self.get(endpoint_id, app_version_name, name) {
            Current::Config { config_id, .. } => Some(config_id),
            Current::Absent => None,
        }
    }

    /// Every configuration ID created, in creation order.
    pub fn created(&self) -> &[String] {
        &self.created
    }

    /// The order in which the provider created `config_id` (1 for `cfg-1`); `""`
    /// (no configuration) is 0; `None` for an ID it never created.
    pub fn order(&self, config_id: &str) -> Option<u64> {
        if config_id.is_empty() {
            return Some(0);
        }
        let n: usize = config_id.strip_prefix("cfg-")?.parse().ok()?;
        (1..=self.created.len()).contains(&n).then_some(n as u64)
    }

    /// How "no configuration" is answered from now on.
    pub fn absent_as(&mut self, form: AbsentForm) {
        self.absent = form;
    }

    /// Answers every request with `status_code` and `reason` from now on.
    pub fn fail_with(&mut self, status_code: i32, reason: &str) {
        self.failure = Some((status_code, reason.to_owned()));
    }

    /// Answers by the rules again (after [`FakeProvider::fail_with`]).
    pub fn answer_normally(&mut self) {
        self.failure = None;
    }

    /// Requests [`received`](FakeProvider::receive) from now on are answered
    /// `delay` later.
    pub fn delay(&mut self, delay: Duration) {
        self.delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    }

    /// How many requests the provider has answered.
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// The answer to `request` now, from what the store holds now.
    pub fn answer(
        &mut self,
        request: &ConfigRequest<'_>,
        now: UnixMillis,
    ) -> ConfigResponse<'static> {
        self.answered += 1;
        if let Some((status_code, reason)) = &self.failure {
            return ConfigResponse::error(Some(request), *status_code, reason.as_str(), now.0)
                .into_owned();
        }
        let current = self.get(
            &request.endpoint_id,
            &request.app_version_name,
            request.config_name.as_deref(),
        );
        match (current, self.absent) {
            (Current::Absent, AbsentForm::NotFound) => {
                ConfigResponse::error(Some(request), 404, "no configuration", now.0)
            }
            (current, _) => ConfigResponse::answer(request, current, now.0),
        }
        .into_owned()
    }

    /// Takes `request` in, to be answered after the [`delay`](FakeProvider::delay)
    /// by [`FakeProvider::poll_answer`].
    pub fn receive(&mut self, request: &ConfigRequest<'_>, now: UnixMillis) {
        let due = UnixMillis(now.0.saturating_add(self.delay_ms));
        self.held.push_back((due, request.clone().into_owned()));
    }

    /// The next answer due at `now`, in the order the requests came in.
    pub fn poll_answer(&mut self, now: UnixMillis) -> Option<ConfigResponse<'static>> {
        if self.held.front().is_none_or(|(due, _)| due.0 > now.0) {
            return None;
        }
        let (_, request) = self.held.pop_front()?;
        Some(self.answer(&request, now))
    }

    /// When the next held answer is due.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.held.front().map(|(due, _)| *due)
    }

    /// Requests received and not answered yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config_id: Option<&str>, name: Option<&str>) -> ConfigRequest<'static> {
        ConfigRequest {
            correlation_id: "c".into(),
            app_version_name: "av".into(),
            endpoint_id: "ep".into(),
            config_id: config_id.map(|c| c.to_owned().into()),
            config_name: name.map(|n| n.to_owned().into()),
            ..Default::default()
        }
    }

    #[test]
    fn answers_by_the_rules_and_orders_its_ids() {
        let mut p = FakeProvider::new();
        assert_eq!(
            p.answer(&request(None, None), UnixMillis(1)).status_code,
            404
        );
        p.absent_as(AbsentForm::EmptyId);
        let absent = p.answer(&request(None, None), UnixMillis(1));
        assert_eq!(absent.config_id.as_deref(), Some(""));
        let u = p.set("ep", "av", Some("default"), "1");
        assert_eq!(u.config_name.as_deref(), Some("default"));
        p.set("ep", "av", Some("net"), "2");
        assert_eq!(p.current("ep", "av", None), Some("cfg-1"));
        let same = p.answer(&request(Some("cfg-1"), None), UnixMillis(1));
        assert_eq!((same.config_id, same.content), (None, None));
        let net = p.answer(&request(Some("cfg-1"), Some("net")), UnixMillis(1));
        assert_eq!(net.config_id.as_deref(), Some("cfg-2"));
        assert_eq!(
            (
                p.order(""),
                p.order("cfg-2"),
                p.order("cfg-3"),
                p.order("x")
            ),
            (Some(0), Some(2), None, None)
        );
        assert_eq!(p.answered(), 4);
    }

    #[test]
    fn late_answers_say_what_the_store_holds_when_they_go_out() {
        let mut p = FakeProvider::new();
        p.delay(Duration::from_millis(100));
        p.receive(&request(None, None), UnixMillis(1_000));
        assert_eq!(p.poll_timeout(), Some(UnixMillis(1_100)));
        assert!(p.poll_answer(UnixMillis(1_099)).is_none());
        p.set("ep", "av", None, "{}");
        let a = p.poll_answer(UnixMillis(1_100)).expect("due");
        assert_eq!(
            (a.config_id.as_deref(), a.timestamp),
            (Some("cfg-1"), 1_100)
        );
        assert_eq!(p.held(), 0);
        p.fail_with(500, "down");
        p.receive(&request(None, None), UnixMillis(2_000));
        let e = p.poll_answer(UnixMillis(3_000)).expect("due");
        assert_eq!(
            (e.status_code, e.reason_phrase.as_deref()),
            (500, Some("down"))
        );
        p.answer_normally();
        assert_eq!(
            p.answer(&request(None, None), UnixMillis(1)).status_code,
            200
        );
    }
}
