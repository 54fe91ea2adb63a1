//! What Kaa's own device clients send and expect, and what this crate (with the
//! KPC service, `services/kaa-kpc`) accepts. Documentation only.
//!
//! Read from the clients' public sources:
//!
//! - **Python**: kaaproject/mqtt-client-python, the official client (`kaa_mqtt_client/`,
//!   paho-mqtt ~1.5.1, and its `examples/`), at commit 6dc768b (2025-08-13).
//! - **Node**: kaaproject/mqtt-client-node (`src/KaaMqttClient.ts`, `src/types.ts`,
//!   `examples/SimpleEndpoint.ts`; MQTT.js).
//! - **Arduino**: kaaproject/kaa-arduino-sdk (`kaa.h`, `examples/kaa_basic`;
//!   PubSubClient).
//! - **Web thermostat**: kaaproject/web-thermostat-simulator
//!   (`src/kaa/mqtt/MqttUtils.ts`; MQTT.js).
//!
//! The Python client's exact bytes are replayed end to end, on the all-in-one
//! stack and on the separate processes over NATS, by the `official_python_client`
//! test in `examples/testkit/src/e2e.rs`.
//!
//! # Connection
//!
//! | shape | client | accepted |
//! |---|---|---|
//! | MQTT 3.1.1, clean session, no credentials; keep-alive 60 s (Python, Node), 15 s (Arduino) | all | yes |
//! | empty client ID (paho-mqtt sends one for 3.1.1 when `KaaMqttClient` gets no `client_id`, as in `examples/fleet_simulator`) | Python | yes: KPC assigns an ID (clean session) |
//! | one fixed client ID for every device (`client_id='counter'` in `examples/simple_client`, `linux_sys_scan`, `deye`) | Python | yes, but two such devices on one KPC take each other's connection over (MQTT 3.1.1, 3.1.4-2): give each device its own ID |
//! | no SUBSCRIBE at all (handlers are paho `message_callback_add` filters) | Python | yes: KPC delivers to the session that owns the token, subscribed or not |
//! | SUBSCRIBE to `…/config/json` and `…/config/json/+/status` (Arduino), to `<request topic>/+` (Node), to `…/cmx/<token>/config/json` (web thermostat) | Arduino, Node, web | yes: SUBACK; delivery never depends on it |
//! | MQTT over WebSocket (`wss://…/ws`) | web | **no**: KPC listens on plain TCP only |
//! | every PUBLISH at QoS 0 | all | yes; answers and pushes go back at QoS 0 (a push takes the QoS of the session's last request for that resource, 0 when there was none) |
//!
//! # What they publish
//!
//! Topics are `kp1/<appVersion>/<extension>/<token>/…`; `[n]` is a request ID.
//!
//! | topic, payload | client | what happens |
//! |---|---|---|
//! | `…/bcx/<token>/token`, empty payload, no request ID: the first PUBLISH after CONNECT (`KaaMqttClient.connect`) | Python | the session's first use of the token: KPC resolves it and publishes `connected`, so CMX pushes the configuration; then the request goes to the `bcx` extension, or, when `kpc.extension-instances` does not list it, is refused (no response; counted and logged by KPC) |
//! | `…/cmx_ota/<token>/applied/json` `{"configId": "0.0.1"}` (`publish_ota_config`; Node `reportCurrentSoftwareVersion`) | Python, Node | a valid 7/CMP applied report for the `cmx_ota` instance (a second CMX with another provider); refused like `bcx` where that instance is not configured |
//! | `…/cmx/<token>/config/json/[n]` `{"observe": true}` (Arduino `requestConfig`, n in 1..100000), `{"observe":true}` or `{}` (Node with a request ID) | Arduino, Node | yes: answered on `…/config/json/[n]/status`, pushes follow |
//! | `…/cmx/<token>/config/json` `{"observe":true}` or `{}` without a request ID (Node `getConfigurationJson` by default) | Node | yes: the configuration comes as a push on `…/config/json/status` (no response without a request ID); nothing when the device's `configId` is current |
//! | `…/cmx/<token>/config/json/0` `{}` (`Math.round(Math.random() * 1000)` can give 0) | web | `0` is not a request ID (1/KP: a positive integer), so this is a request for the configuration **named `0`**, without a request ID |
//! | `{}`, `{"observe": true}`, an empty payload, `"observe": null`, `"configId": null` in a configuration request | all | all accepted; `{}`, empty and `null` mean "observe not given": CMX pushes changes, as Kaa's CMX does; only `"observe": false` stops them |
//! | `…/cmx/<token>/applied/json` (no request ID), `{"configId": "<id>", "statusCode": null, "reasonPhrase": null}` (`ConfigurationResponse(config_id)`, the library's default) | Python | yes: `null` is "not set", 200; applied |
//! | same topic, `{"configId": "<id>", "statusCode": 500, "reasonPhrase": "<str(e)>"}` (`apply_configuration` after the handler raised) | Python | yes: rejected, status and text kept in `/statuses` |
//! | `{"configId": "<id>", "statusCode": 200, "reasonPhrase": null}` (`fleet_simulator`), `… 200, "reasonPhrase": "applied"}` (`simple_client`), `"Success"` / 500 `"ERROR: '…'"` (`linux_sys_scan`), `{"configId":"…","statusCode":200,"reasonPhrase":"ok"}` (Node) | Python, Node | yes |
//! | `"configId": null` (what the Python library would send for a push without `configId`) | Python | **refused** (400): which configuration was applied is unknown |
//! | `"reason_phrase"` and `"config"` properties (the Python client's first commit, 74a0910, replaced the same day) | Python | **refused** (400): unknown properties |
//! | `…/dcx/<token>/json/[n]`, `…/epmx/<token>/update/keys/[n]`, `…/cex/<token>/result/<type>` | all | other extensions: forwarded to them, or refused by KPC when `kpc.extension-instances` does not list them (404 on `…/error` when there is a request ID) |
//!
//! # What they expect back
//!
//! | expectation | client | served |
//! |---|---|---|
//! | the configuration as a push on `…/cmx/<token>/config/json/status` without ever asking (the only topic `configuration_handler` reads) | Python | yes: pushed when the endpoint connects (its first PUBLISH, whatever extension it names) unless it reported that configuration applied, and on every change |
//! | the response on `…/config/json/[n]/status` | Arduino, Node | yes |
//! | a push payload with both `configId` and `config` (`Configuration(**json.loads(payload))`; the examples then call `c.config.items()`) | Python | yes for every configuration; but after an endpoint's configuration is deleted it gets the absent one, `{"configId": "", "config": null}` (7/CMP), on which those example handlers raise. Nothing is pushed on connect when there is no configuration |
//! | the configuration on `…/cmx/<token>/config/json` itself | web | **no**: 1/KP answers on `<request topic>/status` and `/error` only |
//! | an answer on `…/applied/json/+` (Node subscribes there) | Node | nothing: no request ID, no response |
//!
//! # Refusals nobody hears of
//!
//! A request without a request ID gets no response, not even an error on
//! `…/error`: 1/KP says "If Request ID is not present in MQTT topic, response
//! SHOULD NOT be published", an error response is a response (published on
//! `<request topic>/error`), and 7/CMP's applied resource has an empty response.
//! None of these clients reads such a topic either (the Node client would pass
//! one to its error callback, so publishing one would not hurt it, but the RFC
//! decides). So a refused fire-and-forget request reaches nobody but the
//! operator: CMX counts it in `cmx_refused_without_request_id_total{reason}`
//! and logs it ([`Cmx::poll_refusal`](crate::Cmx::poll_refusal)); KPC counts the
//! ones it refuses itself in `kpc_refused_without_request_id_total{reason}` and
//! logs them. Logs carry the correlation ID, the endpoint, the resource and the
//! reason, never the payload.
