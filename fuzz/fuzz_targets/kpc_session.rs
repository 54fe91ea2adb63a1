//! KPC: the sans-IO session core (`kaa_kpc::session::SessionCore`) driven
//! through a sequence of device packets (PUBLISH at QoS 0/1/2 to built or raw
//! topics, PUBACK, PUBREL, SUBSCRIBE, PINGREQ, DISCONNECT, packets a device may
//! not send), 4/ESP `ExtensionData` deliveries (responses and pushes, for
//! endpoints the session has and has not used, any status, payload size,
//! extension and request ID), time and keep-alive timeouts, with the answers to
//! the session's questions (token resolution, claim, the bus taking the
//! `ClientData`) given at once, held back while other inputs arrive, refused,
//! or given when nothing was asked.
//!
//! Checks after every step: no panic; at most one question outstanding, and a
//! question only while none is; every packet for the device encodes and decodes
//! back to itself, never at QoS 2, a PUBLISH topic without wildcards, `/status`
//! or `/error` at its end, and a valid `{"statusCode", "reasonPhrase"}` on
//! `/error`; a delivery reaches the device only for an endpoint a token of the
//! session stands for, a response only on a topic the device sent a forwarded
//! request on for that endpoint, a push only with a token that stands for the
//! endpoint; every delivery is counted once; pending requests never exceed
//! `max-inflight`; QoS 1 packet identifiers in flight are non-zero and unique,
//! match the core's and stay within `max-inflight`; a forwarded `ClientData`
//! decodes and carries the endpoint the token resolved to; nothing comes out
//! after `Close`.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use kaa_esp::{ClientData, ExtensionData};
use kaa_ism::UnixMillis;
use kaa_ism::avro::Decode;
use kaa_kp::{ErrorResponse, Topic};
use kaa_kpc::mqttbytes::QoS;
use kaa_kpc::mqttbytes::v4::{
    Connect, Packet, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe, SubscribeFilter,
    Unsubscribe,
};
use kaa_kpc::resolver::{ResolveError, ResolvedEndpoint};
use kaa_kpc::session::{Close, Count, Input, Now, Output, SessionCore, SessionSettings};
use libfuzzer_sys::fuzz_target;

const TOKENS: [&str; 5] = ["tok-a", "tok-b", "tok-a2", "tok-down", "tok-x"];
const ENDPOINTS: [&str; 4] = ["ep-a", "ep-b", "ep-c", "tok-a"];
const EXTENSIONS: [&str; 3] = ["cmx", "cmx_ota", "bcx"];
const VERSIONS: [&str; 2] = ["v1", "v2"];
const RESOURCES: [&str; 4] = ["/config/json", "/config/json/network", "", "/config/+"];

#[derive(Arbitrary, Debug)]
enum Part {
    Known(u8),
    Raw(String),
}

impl Part {
    fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Part::Known(i) => known[usize::from(*i) % known.len()],
            Part::Raw(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TopicInput {
    /// `kp1/<av>/<ext>/<token><resource>[/<request id>]`.
    Built {
        av: Part,
        ext: Part,
        token: Part,
        resource: Part,
        request_id: Option<u8>,
    },
    Raw(String),
}

impl TopicInput {
    fn build(&self) -> String {
        match self {
            TopicInput::Built {
                av,
                ext,
                token,
                resource,
                request_id,
            } => {
                let mut t = format!(
                    "kp1/{}/{}/{}{}",
                    av.pick(&VERSIONS),
                    ext.pick(&EXTENSIONS),
                    token.pick(&TOKENS),
                    resource.pick(&RESOURCES)
                );
                if let Some(id) = request_id {
                    t.push_str(&format!("/{}", id % 8));
                }
                t
            }
            TopicInput::Raw(s) => s.clone(),
        }
    }
}

/// How the world answers the session's next question.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Answer {
    /// At once; the bus takes the `ClientData`.
    Now,
    /// At once; the bus refuses it.
    BusDown,
    /// Not yet: later steps come first.
    Hold,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Publish {
        topic: TopicInput,
        qos: u8,
        pkid: u16,
        payload: u8,
        answer: Answer,
    },
    /// PUBACK of the `n`th QoS 1 delivery in flight, or of a raw identifier.
    PubAck(Option<u8>, u16),
    PubRel(u16),
    PubRec(u16),
    PubComp(u16),
    Subscribe(Vec<(String, u8)>),
    Unsubscribe(u16),
    PingReq,
    Disconnect,
    Connect,
    ServerOnly,
    Deliver {
        endpoint: Option<Part>,
        extension: Option<Part>,
        app_version: Option<Part>,
        resource: Part,
        request_id: Option<u8>,
        status: u16,
        payload: u8,
        reason: Option<String>,
    },
    /// Answer the held question (given when nothing is asked: ignored).
    Release {
        bus_down: bool,
    },
    Advance(u16),
    Timeout,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    max_inflight: u8,
    max_endpoints: u8,
    max_payload: u8,
    restrict_extensions: bool,
    keep_alive: Option<u8>,
    timeout_ms: u16,
    steps: Vec<Step>,
}

/// What the world knows of the session.
struct Model {
    settings: Arc<SessionSettings>,
    /// Token → endpoint, as the session resolved them.
    tokens: HashMap<String, String>,
    /// The question asked and not yet answered, and its request's topic.
    asked: Option<(Output, String)>,
    hold: bool,
    bus_down: bool,
    /// QoS 1 deliveries waiting for PUBACK, by packet identifier.
    in_flight: Vec<u16>,
    /// Packet identifiers the device has acknowledged.
    acks: HashSet<u16>,
    /// (endpoint, request topic) of requests forwarded with a request ID.
    forwarded: HashSet<(String, String)>,
    /// When the device last sent a packet.
    last_packet: Duration,
    closed: bool,
}

fn resolve(token: &str) -> Result<ResolvedEndpoint, ResolveError> {
    match token {
        "tok-a" | "tok-a2" => Ok(ResolvedEndpoint::new("ep-a")),
        "tok-b" => Ok(ResolvedEndpoint::new("ep-b")),
        "tok-down" => Err(ResolveError::Unavailable("down".into())),
        _ => Err(ResolveError::UnknownToken),
    }
}

fn check_packet(packet: &Packet) {
    let mut buf = BytesMut::new();
    packet
        .write(&mut buf, usize::MAX)
        .expect("a packet the codec writes");
    let back = Packet::read(&mut buf, usize::MAX).expect("a packet the codec reads back");
    assert_eq!(&back, packet);
    assert!(buf.is_empty());
}

impl Model {
    /// Takes every output of the session after one input; the answer to give
    /// next, if any.
    fn drain(&mut self, session: &mut SessionCore, deliver: Option<&str>) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(output) = session.poll_output() {
            assert!(!self.closed, "output after Close: {output:?}");
            match &output {
                Output::Resolve { .. } | Output::Claim { .. } | Output::Forward { .. } => {
                    assert!(self.asked.is_none(), "a second question: {output:?}");
                    let topic = session
                        .request_topic()
                        .expect("a question belongs to a request")
                        .to_owned();
                    let parsed = Topic::parse_request(&topic).expect("a 1/KP request topic");
                    if let Output::Forward { client_data, .. } = &output {
                        let data = ClientData::decode(client_data).expect("a ClientData");
                        assert_eq!(
                            data.endpoint_id.as_deref(),
                            self.tokens.get(parsed.endpoint_token()).map(String::as_str),
                            "ClientData for another endpoint than its token's"
                        );
                        assert_eq!(&*data.app_version_name, parsed.app_version_name());
                        assert!(data.payload.len() <= self.settings.max_payload);
                        let allowed = &self.settings.extension_instances;
                        let ext = parsed.extension_instance_name();
                        assert!(allowed.is_empty() || allowed.iter().any(|a| a == ext));
                    }
                    self.asked = Some((output, topic));
                    continue;
                }
                Output::Transmit(packet) => {
                    check_packet(packet);
                    if let Packet::Publish(p) = packet {
                        self.check_publish(p, deliver);
                    }
                }
                Output::Close(_) => self.closed = true,
                _ => {}
            }
            out.push(output);
        }
        let unacked: HashSet<u16> = session.unacked().collect();
        for id in &self.in_flight {
            // Only a PUBACK frees an identifier.
            assert!(unacked.contains(id) || self.acks.contains(id), "{id} freed");
        }
        self.in_flight.retain(|id| unacked.contains(id));
        let model: HashSet<u16> = self.in_flight.iter().copied().collect();
        assert_eq!(unacked, model, "packet identifiers in flight");
        assert_eq!(
            model.len(),
            self.in_flight.len(),
            "a packet identifier twice"
        );
        assert!(self.in_flight.len() <= self.settings.max_inflight);
        assert!(session.pending_requests() <= self.settings.max_inflight);
        assert_eq!(session.is_closed(), self.closed);
        out
    }

    fn check_publish(&mut self, p: &Publish, deliver: Option<&str>) {
        assert_ne!(p.qos, QoS::ExactlyOnce, "KPC never sends QoS 2");
        assert!(!p.topic.contains(['+', '#', '\0']));
        match p.qos {
            QoS::AtMostOnce => assert_eq!(p.pkid, 0),
            _ => {
                assert_ne!(p.pkid, 0);
                assert!(!self.in_flight.contains(&p.pkid), "pkid {} reused", p.pkid);
                self.in_flight.push(p.pkid);
            }
        }
        let request = if let Some(r) = p.topic.strip_suffix("/error") {
            let e = ErrorResponse::from_json(&p.payload).expect("a 1/KP error payload");
            // KPC's own refusals give a reason; extensions' may be empty.
            assert!(deliver.is_some() || !e.reason_phrase.is_empty());
            assert!(deliver.is_some() || (400..600).contains(&e.status_code));
            r
        } else {
            p.topic.strip_suffix("/status").expect("/status or /error")
        };
        if let Some(endpoint) = deliver {
            // Delivered: for an endpoint a token of the session stands for.
            assert!(
                self.tokens.values().any(|e| e == endpoint),
                "a delivery for {endpoint} reached the device"
            );
            let topic = Topic::parse_request(request).expect("a 1/KP request topic");
            let forwarded = self
                .forwarded
                .contains(&(endpoint.to_owned(), request.to_owned()));
            let pushed =
                self.tokens.get(topic.endpoint_token()).map(String::as_str) == Some(endpoint);
            assert!(forwarded || pushed, "{} for {endpoint}", p.topic);
        }
    }

    /// Answers the question asked, unless held.
    fn answer(&mut self, session: &mut SessionCore, now: Now) -> Vec<Output> {
        let mut out = Vec::new();
        while !self.hold {
            let Some((asked, topic)) = self.asked.take() else {
                break;
            };
            let input = match asked {
                Output::Resolve { token, .. } => {
                    let resolved = resolve(&token);
                    if let Ok(e) = &resolved {
                        self.tokens.insert(token, e.endpoint_id.clone());
                    }
                    Input::Resolved(resolved)
                }
                Output::Claim { .. } => Input::Claimed,
                Output::Forward { .. } if self.bus_down => Input::ForwardFailed,
                Output::Forward { client_data, .. } => {
                    let data = ClientData::decode(&client_data).expect("a ClientData");
                    if let (Some(endpoint), Some(_)) = (data.endpoint_id, data.request_id) {
                        self.forwarded.insert((endpoint.into_owned(), topic));
                    }
                    Input::Forwarded
                }
                other => panic!("not a question: {other:?}"),
            };
            session.handle_input(input, now);
            out.extend(self.drain(session, None));
        }
        out
    }
}

fuzz_target!(|setup: Setup| {
    let settings = Arc::new({
        let mut s = SessionSettings::default();
        s.max_inflight = 1 + usize::from(setup.max_inflight % 4);
        s.max_endpoints = 1 + usize::from(setup.max_endpoints % 3);
        s.max_payload = usize::from(setup.max_payload) * 2;
        s.request_timeout = Duration::from_millis(u64::from(setup.timeout_ms));
        if setup.restrict_extensions {
            s.extension_instances = vec!["cmx".into(), "cmx_ota".into()];
        }
        s
    });
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let now = |elapsed: Duration| Now {
        instant: t0 + elapsed,
        wall: UnixMillis(1_700_000_000_000 + elapsed.as_millis() as i64),
    };
    let keep_alive = setup
        .keep_alive
        .map(|k| Duration::from_millis(u64::from(k) * 1500));
    let mut n = 0u64;
    let mut session = SessionCore::new(Arc::clone(&settings), keep_alive, t0, move || {
        n += 1;
        format!("corr-{n}")
    });
    let mut model = Model {
        settings,
        tokens: HashMap::new(),
        asked: None,
        hold: false,
        bus_down: false,
        in_flight: Vec::new(),
        acks: HashSet::new(),
        forwarded: HashSet::new(),
        last_packet: Duration::ZERO,
        closed: false,
    };
    for step in setup.steps.iter().take(64) {
        let t = now(elapsed);
        let packet = match step {
            Step::Publish {
                topic,
                qos,
                pkid,
                payload,
                answer,
            } => {
                let qos = match qos % 3 {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                };
                let mut p = Publish::new(topic.build(), qos, vec![b'x'; usize::from(*payload)]);
                // The codec refuses identifier 0 at QoS 1 and 2.
                p.pkid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    (*pkid).max(1)
                };
                if model.asked.is_none() {
                    model.hold = matches!(answer, Answer::Hold);
                    model.bus_down = matches!(answer, Answer::BusDown);
                }
                Some(Packet::Publish(p))
            }
            Step::PubAck(nth, raw) => {
                let pkid = match nth {
                    Some(i) if !model.in_flight.is_empty() => {
                        model.in_flight[usize::from(*i) % model.in_flight.len()]
                    }
                    _ => *raw,
                };
                model.acks.insert(pkid);
                Some(Packet::PubAck(PubAck::new(pkid)))
            }
            Step::PubRel(id) => Some(Packet::PubRel(PubRel::new(*id))),
            Step::PubRec(id) => Some(Packet::PubRec(PubRec::new(*id))),
            Step::PubComp(id) => Some(Packet::PubComp(PubComp::new(*id))),
            Step::Subscribe(filters) => Some(Packet::Subscribe(Subscribe::new_many(
                filters.iter().take(4).map(|(path, qos)| {
                    let qos = if qos % 2 == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    SubscribeFilter::new(path.clone(), qos)
                }),
            ))),
            Step::Unsubscribe(id) => {
                let mut u = Unsubscribe::new("a/b");
                u.pkid = *id;
                Some(Packet::Unsubscribe(u))
            }
            Step::PingReq => Some(Packet::PingReq),
            Step::Disconnect => Some(Packet::Disconnect),
            Step::Connect => Some(Packet::Connect(Connect::new("again"))),
            Step::ServerOnly => Some(Packet::PingResp),
            Step::Deliver {
                endpoint,
                extension,
                app_version,
                resource,
                request_id,
                status,
                payload,
                reason,
            } => {
                let endpoint = endpoint.as_ref().map(|e| e.pick(&ENDPOINTS));
                let data = ExtensionData {
                    correlation_id: "c".into(),
                    timestamp: 0,
                    timeout: 0,
                    app_version_name: app_version.as_ref().map(|v| v.pick(&VERSIONS).into()),
                    extension_instance_name: extension.as_ref().map(|e| e.pick(&EXTENSIONS).into()),
                    endpoint_id: endpoint.map(Into::into),
                    resource_path: resource.pick(&RESOURCES).into(),
                    request_id: request_id.map(|r| i32::from(r % 8)),
                    payload: (*payload > 0).then(|| vec![b'y'; usize::from(*payload)].into()),
                    status_code: i32::from(*status % 700),
                    reason_phrase: reason.as_deref().map(Into::into),
                };
                let was_closed = model.closed;
                session.handle_input(Input::Deliver(data), t);
                let out = model.drain(&mut session, endpoint.or(Some("")));
                let counted = out
                    .iter()
                    .filter(|o| matches!(o, Output::Count(Count::ExtensionData(_))))
                    .count();
                assert_eq!(counted, usize::from(!was_closed), "counted once: {out:?}");
                None
            }
            Step::Release { bus_down } => {
                model.hold = false;
                model.bus_down = *bus_down;
                if model.asked.is_none() {
                    // Nothing asked: an answer out of the blue is ignored.
                    session.handle_input(Input::Claimed, t);
                    session.handle_input(Input::Forwarded, t);
                    assert!(model.drain(&mut session, None).is_empty());
                }
                None
            }
            Step::Advance(ms) => {
                elapsed += Duration::from_millis(u64::from(*ms));
                None
            }
            Step::Timeout => {
                let was_closed = model.closed;
                session.handle_input(Input::Timeout, t);
                let out = model.drain(&mut session, None);
                let due = keep_alive.is_some_and(|k| elapsed >= model.last_packet + k);
                assert_eq!(out.len(), usize::from(due && !was_closed), "{out:?}");
                assert!(
                    out.iter()
                        .all(|o| matches!(o, Output::Close(Close::KeepAlive)))
                );
                None
            }
        };
        if let Some(packet) = packet {
            if !model.closed {
                model.last_packet = elapsed;
            }
            session.handle_input(Input::Packet(packet), t);
            model.drain(&mut session, None);
        }
        model.answer(&mut session, now(elapsed));
    }
    // Everything held is answered in the end; the session settles.
    model.hold = false;
    model.answer(&mut session, now(elapsed));
    assert!(model.asked.is_none() || model.closed);
});
