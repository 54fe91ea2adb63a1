//! The invariants every harness that drives the engine checks on its outputs:
//! written once for the model test, the benchmarks and the `cmx_sequence` fuzz
//! target.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use kaa_cdtp::ConfigResponse as CdtpResponse;
use kaa_ism::UnixMillis;

use crate::engine::{Cmx, CmxConfig, OutgoingConfigRequest, OutgoingExtensionData};
use crate::message::ConfigResponse;
use crate::test_support::FakeProvider;

/// A broken invariant: what the engine did wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(String);

impl Violation {
    /// A violation described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Violation(message.into())
    }

    /// What was broken.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), Violation> {
    if ok {
        Ok(())
    } else {
        Err(Violation(message()))
    }
}

/// The configuration a resource path is about: `Some(None)` for the default
/// configuration (`/config/json` or `/config/json/default`), `Some(Some(name))`
/// for a named one, `None` for any other resource. Written apart from the
/// engine's parser ([`crate::resource`]), so that the checks do not share its
/// mistakes.
pub fn config_name_of_path(path: &str) -> Option<Option<&str>> {
    match path.strip_prefix("/config/json")? {
        "" | "/default" => Some(None),
        n => n.strip_prefix('/').map(Some),
    }
}

/// The statuses the engine sends of its own: 200, 400 (malformed), 404
/// (unknown resource, no endpoint), 502 (a provider answer it cannot use), 503
/// (limits) and 504 (provider timeout).
pub const ENGINE_STATUSES: [i32; 6] = [200, 400, 404, 502, 503, 504];

/// **Responses** (the shape of one `ExtensionData`): the status is one of
/// [`ENGINE_STATUSES`] or a 4xx/5xx the provider sent (`provider_sent`); a
/// non-2xx one carries a non-empty reason and no payload; a 200 on a
/// configuration resource carries a payload of valid 7/CMP JSON, which is
/// returned.
pub fn check_response(
    m: &OutgoingExtensionData,
    provider_sent: impl Fn(i32) -> bool,
) -> Result<Option<ConfigResponse>, Violation> {
    let status = m.status_code;
    ensure(
        ENGINE_STATUSES.contains(&status)
            || ((400..600).contains(&status) && provider_sent(status)),
        || format!("undocumented status {status}: {m:?}"),
    )?;
    if !(200..300).contains(&status) {
        ensure(
            m.reason_phrase.as_deref().is_some_and(|r| !r.is_empty()),
            || format!("an error without a reason: {m:?}"),
        )?;
        ensure(m.payload.is_none(), || {
            format!("an error with a payload: {m:?}")
        })?;
    }
    if status != 200 || config_name_of_path(&m.resource_path).is_none() {
        return Ok(None);
    }
    let payload = m
        .payload
        .as_deref()
        .ok_or_else(|| Violation(format!("a configuration response without a payload: {m:?}")))?;
    ConfigResponse::from_json(payload)
        .map(Some)
        .map_err(|e| Violation(format!("not valid 7/CMP JSON ({e}): {m:?}")))
}

/// (endpoint, app version, canonical name).
type ConfigKey = (String, String, Option<String>);

/// **Never older after newer**: per endpoint, app version and configuration
/// name, the configurations sent in `ExtensionData` have non-decreasing
/// provider creation order ([`FakeProvider::order`]: the harness knows it, the
/// engine does not), and each is one the provider created (or `""`, none).
#[derive(Debug, Default)]
pub struct ConfigOrder {
    sent: HashMap<ConfigKey, u64>,
}

impl ConfigOrder {
    /// Checks `m` (anything but a configuration sent to an endpoint passes).
    pub fn check(
        &mut self,
        m: &OutgoingExtensionData,
        provider: &FakeProvider,
    ) -> Result<(), Violation> {
        let (Some(name), Some(ep), Some(payload)) = (
            config_name_of_path(&m.resource_path),
            m.endpoint_id.as_deref(),
            &m.payload,
        ) else {
            return Ok(());
        };
        let Ok(ConfigResponse::Config { config_id, .. }) = ConfigResponse::from_json(payload)
        else {
            return Ok(());
        };
        let order = provider.order(&config_id).ok_or_else(|| {
            Violation(format!(
                "{config_id:?} is not a configuration of the provider: {m:?}"
            ))
        })?;
        let key = (
            ep.to_owned(),
            m.app_version_name.to_string(),
            name.map(str::to_owned),
        );
        let last = self.sent.entry(key).or_default();
        let previous = *last;
        *last = order.max(previous);
        ensure(order >= previous, || {
            format!(
                "an older configuration after a newer one: {config_id} (order {order}) after order {previous}: {m:?}"
            )
        })
    }
}

/// **At most one CDTP request in flight** per endpoint and name: a request is
/// in flight until its first answer reaches the engine, its deadline passes in
/// `handle_timeout`, or the engine forgets the endpoint. Every request's
/// deadline is its timestamp plus the configured CDTP timeout.
#[derive(Debug)]
pub struct InFlight {
    cdtp_timeout_ms: i64,
    /// (endpoint, name) → (correlation ID, deadline).
    requests: HashMap<(String, Option<String>), (String, i64)>,
}

impl InFlight {
    /// For an engine with `cdtp_timeout`.
    pub fn new(cdtp_timeout: Duration) -> Self {
        InFlight {
            cdtp_timeout_ms: i64::try_from(cdtp_timeout.as_millis()).unwrap_or(i64::MAX),
            requests: HashMap::new(),
        }
    }

    /// The engine published `r`. `forgetting`: the engine forgot endpoints in
    /// the same step (their requests ended, and new ones may follow).
    pub fn request(
        &mut self,
        r: &OutgoingConfigRequest,
        forgetting: bool,
    ) -> Result<(), Violation> {
        let key = (
            r.endpoint_id.to_string(),
            r.config_name.as_deref().map(str::to_owned),
        );
        if let Some((previous, _)) = self.requests.get(&key) {
            ensure(forgetting, || {
                format!(
                    "two CDTP requests in flight for {key:?}: {previous} and {}",
                    r.correlation_id
                )
            })?;
        }
        ensure(r.deadline.0 == r.timestamp.0 + self.cdtp_timeout_ms, || {
            format!("a CDTP deadline that is not timestamp + timeout: {r:?}")
        })?;
        self.requests
            .insert(key, (r.correlation_id.clone(), r.deadline.0));
        Ok(())
    }

    /// An answer with `correlation_id` reaches the engine.
    pub fn answered(&mut self, correlation_id: &str) {
        self.requests.retain(|_, (c, _)| c != correlation_id);
    }

    /// `handle_timeout(now)` is about to run: deadlines up to `now` end.
    pub fn timeout(&mut self, now: UnixMillis) {
        self.requests.retain(|_, (_, deadline)| *deadline > now.0);
    }

    /// The engine forgot `endpoint_id`.
    pub fn forget(&mut self, endpoint_id: &str) {
        self.requests.retain(|(e, _), _| e != endpoint_id);
    }
}

/// **Limits**: tracked endpoints and CDTP requests in flight stay within the
/// configuration, and requests in flight have a deadline (`poll_timeout`).
pub fn check_limits(cmx: &mut Cmx) -> Result<(), Violation> {
    let (tracked, pending) = (cmx.tracked_endpoints(), cmx.pending_requests());
    let (max_endpoints, max_pending) = (
        cmx.config().max_endpoints,
        cmx.config().max_pending_requests,
    );
    ensure(tracked <= max_endpoints, || {
        format!("{tracked} endpoints tracked, limit {max_endpoints}")
    })?;
    ensure(pending <= max_pending, || {
        format!("{pending} CDTP requests in flight, limit {max_pending}")
    })?;
    ensure(pending == 0 || cmx.poll_timeout().is_some(), || {
        "CDTP requests in flight without a deadline".to_owned()
    })
}

/// **Timers**: after `handle_timeout(now)`, `poll_timeout` is `None` or later
/// than `now`.
pub fn check_after_timeout(cmx: &mut Cmx, now: UnixMillis) -> Result<(), Violation> {
    match cmx.poll_timeout() {
        Some(t) => ensure(t.0 > now.0, || {
            format!("poll_timeout {t:?} is not after handle_timeout({})", now.0)
        }),
        None => Ok(()),
    }
}

/// **Everything ends**: once nobody answers and every deadline has passed, no
/// CDTP request is in flight and no timer is set.
pub fn check_quiet(cmx: &mut Cmx) -> Result<(), Violation> {
    let pending = cmx.pending_requests();
    ensure(pending == 0, || {
        format!("{pending} CDTP requests still in flight")
    })?;
    let timer = cmx.poll_timeout();
    ensure(timer.is_none(), || format!("a timer still set: {timer:?}"))
}

/// The checks above in one place, for a harness that feeds the engine from a
/// [`FakeProvider`]: it tells [`Invariants`] what reaches the engine and hands
/// it what comes out.
///
/// ```
/// use kaa_cmp::engine::{Cmx, CmxConfig, Output};
/// use kaa_cmp::test_support::{FakeProvider, Invariants};
/// use kaa_esp::ClientData;
/// use kaa_ism::UnixMillis;
///
/// let config = CmxConfig::new("cmx", "cmx-1", "ecr", "kpc");
/// let mut inv = Invariants::new(&config);
/// let mut cmx = Cmx::new(config)?;
/// let mut provider = FakeProvider::new();
/// provider.set("ep-1", "kettle-v1", None, r#"{"rate":5}"#);
/// let now = UnixMillis(1_000);
/// let request = ClientData {
///     correlation_id: "kpc-1".into(),
///     app_version_name: "kettle-v1".into(),
///     endpoint_id: Some("ep-1".into()),
///     resource_path: "/config/json".into(),
///     request_id: Some(1),
///     payload: br#"{}"#.as_slice().into(),
///     ..Default::default()
/// };
/// cmx.handle_client_data(&request, None, now);
/// let mut configs = 0;
/// while let Some(out) = cmx.poll_output() {
///     let forgetting = inv.forgetting(&cmx);
///     match out {
///         Output::ConfigRequest(r) => {
///             inv.check_request(&r, forgetting)?;
///             let answer = provider.answer(&r.message(), now);
///             inv.answer_delivered(&answer);
///             cmx.handle_config_response(&answer, now);
///         }
///         Output::ExtensionData(m) => {
///             configs += inv.check_extension_data(&m, &provider)?.is_some() as usize;
///         }
///         _ => {}
///     }
///     inv.check_limits(&mut cmx)?;
/// }
/// assert_eq!(configs, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Invariants {
    /// Never older after newer.
    pub order: ConfigOrder,
    /// At most one CDTP request in flight per endpoint and name.
    pub in_flight: InFlight,
    /// Statuses of the provider answers that reached the engine.
    provider_statuses: HashSet<i32>,
    /// Endpoints the engine forgot (evicted or expired) when last asked.
    removals: u64,
}

impl Invariants {
    /// For an engine configured with `config`.
    pub fn new(config: &CmxConfig) -> Self {
        Invariants {
            order: ConfigOrder::default(),
            in_flight: InFlight::new(config.cdtp_timeout),
            provider_statuses: HashSet::new(),
            removals: 0,
        }
    }

    /// Whether the engine forgot endpoints (evicted, expired) since the last
    /// call: then a request in flight may have ended without an answer.
    pub fn forgetting(&mut self, cmx: &Cmx) -> bool {
        let s = cmx.stats();
        let removals = s.endpoints_evicted + s.endpoints_expired;
        let changed = removals != self.removals;
        self.removals = removals;
        changed
    }

    /// A provider answer reaches the engine (call before handing it in).
    pub fn answer_delivered(&mut self, answer: &CdtpResponse<'_>) {
        self.provider_statuses.insert(answer.status_code);
        self.in_flight.answered(&answer.correlation_id);
    }

    /// `handle_timeout(now)` is about to run.
    pub fn timeout(&mut self, now: UnixMillis) {
        self.in_flight.timeout(now);
    }

    /// Checks a CDTP request the engine published ([`InFlight::request`]).
    pub fn check_request(
        &mut self,
        r: &OutgoingConfigRequest,
        forgetting: bool,
    ) -> Result<(), Violation> {
        self.in_flight.request(r, forgetting)
    }

    /// Checks an `ExtensionData` the engine published ([`check_response`] with
    /// the statuses the provider sent, and [`ConfigOrder`]); returns the
    /// configuration response it carries, if any.
    pub fn check_extension_data(
        &mut self,
        m: &OutgoingExtensionData,
        provider: &FakeProvider,
    ) -> Result<Option<ConfigResponse>, Violation> {
        let config = check_response(m, |s| self.provider_statuses.contains(&s))?;
        self.order.check(m, provider)?;
        Ok(config)
    }

    /// [`check_limits`].
    pub fn check_limits(&self, cmx: &mut Cmx) -> Result<(), Violation> {
        check_limits(cmx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaa_esp::ClientData;

    /// The engine's answer to a request for `ep`'s default configuration.
    fn answer(provider: &mut FakeProvider, ep: &str) -> OutgoingExtensionData {
        let mut cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")).unwrap();
        let cd = ClientData {
            correlation_id: "c".into(),
            app_version_name: "av".into(),
            endpoint_id: Some(ep.to_owned().into()),
            resource_path: "/config/json".into(),
            request_id: Some(1),
            payload: b"{}".as_slice().into(),
            ..Default::default()
        };
        cmx.handle_client_data(&cd, None, UnixMillis(1));
        loop {
            match cmx.poll_output().unwrap() {
                crate::Output::ConfigRequest(r) => {
                    let a = provider.answer(&r.message(), UnixMillis(1));
                    cmx.handle_config_response(&a, UnixMillis(1));
                }
                crate::Output::ExtensionData(m) => return m,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn each_check_catches_what_it_is_for() {
        let mut p = FakeProvider::new();
        p.set("ep", "av", None, "1");
        p.set("ep", "av", None, "2");
        let newer = answer(&mut p, "ep");
        assert!(check_response(&newer, |_| false).unwrap().is_some());
        let mut order = ConfigOrder::default();
        order.check(&newer, &p).unwrap();
        let mut older = newer.clone();
        older.payload = Some(br#"{"configId":"cfg-1","config":1}"#.as_slice().into());
        assert!(order.check(&older, &p).is_err(), "older after newer");
        let mut forged = newer.clone();
        forged.payload = Some(br#"{"configId":"cfg-9","config":1}"#.as_slice().into());
        assert!(order.check(&forged, &p).is_err(), "an ID never created");

        let mut error = newer.clone();
        error.status_code = 502;
        assert!(
            check_response(&error, |_| false).is_err(),
            "a payload on an error"
        );
        error.payload = None;
        assert!(check_response(&error, |_| false).is_err(), "no reason");
        error.reason_phrase = Some("bad".into());
        assert!(check_response(&error, |_| false).is_ok());
        error.status_code = 418;
        assert!(check_response(&error, |_| false).is_err(), "undocumented");
        assert!(
            check_response(&error, |s| s == 418).is_ok(),
            "the provider's"
        );
        let mut junk = newer.clone();
        junk.payload = Some(b"{".as_slice().into());
        assert!(check_response(&junk, |_| false).is_err(), "not JSON");
        junk.payload = None;
        assert!(check_response(&junk, |_| false).is_err(), "no payload");
        assert_eq!(config_name_of_path("/config/json/default"), Some(None));
        assert_eq!(config_name_of_path("/config/json/net"), Some(Some("net")));
        assert_eq!(config_name_of_path("/applied/json"), None);
    }

    #[test]
    fn a_second_request_in_flight_is_caught_until_the_first_ends() {
        let mut cmx = Cmx::new(CmxConfig::new("cmx", "cmx-1", "ecr", "kpc")).unwrap();
        let cd = ClientData {
            correlation_id: "c".into(),
            app_version_name: "av".into(),
            endpoint_id: Some("ep".into()),
            resource_path: "/config/json".into(),
            request_id: Some(1),
            payload: b"{}".as_slice().into(),
            ..Default::default()
        };
        cmx.handle_client_data(&cd, None, UnixMillis(1));
        let Some(crate::Output::ConfigRequest(r)) = cmx.poll_output() else {
            panic!("a CDTP request");
        };
        let mut in_flight = InFlight::new(cmx.config().cdtp_timeout);
        in_flight.request(&r, false).unwrap();
        assert!(in_flight.request(&r, false).is_err());
        assert!(
            in_flight.request(&r, true).is_ok(),
            "the endpoint was forgotten"
        );
        in_flight.answered(&r.correlation_id);
        in_flight.request(&r, false).unwrap();
        in_flight.timeout(r.deadline);
        in_flight.request(&r, false).unwrap();
        let mut late = r.clone();
        late.deadline = UnixMillis(late.deadline.0 + 1);
        in_flight.forget("ep");
        assert!(in_flight.request(&late, false).is_err(), "a wrong deadline");
        assert!(check_limits(&mut cmx).is_ok());
        assert!(check_quiet(&mut cmx).is_err(), "a request in flight");
    }
}
