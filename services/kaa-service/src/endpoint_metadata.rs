//! Reading endpoints' app versions and metadata from the endpoint register over the
//! bus: the requesting side of the register's metadata lookup (a kaa-rs extension on
//! 16/ECAP subjects, [`kaa_ecap::metadata`]).
//!
//! A service that selects by metadata (ECR's groups and layers) asks the register
//! with a [`MetadataClient`] instead of its REST API: [`MetadataClient::lookup`]
//! takes any number of endpoint IDs, asks in requests of at most
//! [`MAX_ENDPOINT_IDS`], follows answers that
//! list only the first endpoints (206: the rest did not fit one message), and gives
//! one [`Lookup`] per ID, in order. The client lives here, not in the register's
//! crate, so that a service can call it without linking the register's store.
//!
//! ```
//! # async fn example(bus: std::sync::Arc<dyn kaa_bus::Bus>) -> Result<(), kaa_service::endpoint_metadata::MetadataError> {
//! use kaa_service::endpoint_metadata::{Lookup, MetadataClient};
//!
//! let client = MetadataClient::new(bus, "epr")?;
//! for (id, lookup) in ["kettle-1", "kettle-2"].iter().zip(client.lookup(&["kettle-1", "kettle-2"]).await?) {
//!     match lookup {
//!         Lookup::Found(endpoint) => println!("{id}: {} {:?}", endpoint.app_version_name, endpoint.metadata),
//!         Lookup::NotFound => println!("{id}: not registered"),
//!         Lookup::Refused { status_code, reason } => println!("{id}: {status_code} {reason}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kaa_bus::{Bus, BusError};
use kaa_ecap::metadata::{
    EndpointMetadata, EndpointMetadataRequest, EndpointMetadataResponse, MAX_ENDPOINT_IDS, PARTIAL,
    metadata_request_subject,
};
use kaa_ism::avro::{Decode, DecodeError, Encode};
use kaa_ism::subject::SubjectError;
use serde_json::{Map, Value};

/// How long a request waits for the register's answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint as the register knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// Its app version.
    pub app_version_name: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
}

/// What the register answered for one endpoint ID.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Registered: its app version and metadata.
    Found(EndpointInfo),
    /// Not registered (404).
    NotFound,
    /// Not answered with its metadata: not a valid endpoint ID (400), metadata larger
    /// than an answer may be (413), or another status.
    Refused {
        /// The entry's status.
        status_code: i32,
        /// Why.
        reason: String,
    },
}

/// Why a lookup failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The register's instance name is not a valid subject token.
    #[error("register instance name: {0}")]
    Subject(#[from] SubjectError),
    /// The request could not be sent or had no answer in time.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The answer does not decode.
    #[error("undecodable answer: {0}")]
    Decode(#[from] DecodeError),
    /// The register refused the request (400) or failed (500).
    #[error("the register answered {status_code}: {reason}")]
    Refused {
        /// The answer's status.
        status_code: i32,
        /// Its reason phrase.
        reason: String,
    },
    /// The answer does not follow the protocol (another correlation ID, endpoints
    /// not asked about, metadata that is not a JSON object, no progress).
    #[error("invalid answer: {0}")]
    Protocol(String),
}

/// Asks one register instance about endpoints (see [the module docs](self)).
#[derive(Clone)]
pub struct MetadataClient {
    bus: Arc<dyn Bus>,
    subject: String,
    timeout: Duration,
}

impl std::fmt::Debug for MetadataClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataClient")
            .field("subject", &self.subject)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl MetadataClient {
    /// A client of the register instance `register` on `bus`, waiting
    /// [`DEFAULT_TIMEOUT`] for each answer.
    pub fn new(bus: Arc<dyn Bus>, register: &str) -> Result<Self, MetadataError> {
        Ok(Self {
            subject: metadata_request_subject(register)?.to_string(),
            bus,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Waits `timeout` for each answer (also the requests' 3/ISM `timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// One endpoint: `None` when it is not registered.
    pub async fn endpoint(&self, endpoint_id: &str) -> Result<Option<EndpointInfo>, MetadataError> {
        match self.lookup(&[endpoint_id]).await?.pop() {
            Some(Lookup::Found(info)) => Ok(Some(info)),
            Some(Lookup::NotFound) => Ok(None),
            Some(Lookup::Refused {
                status_code,
                reason,
            }) => Err(MetadataError::Refused {
                status_code,
                reason,
            }),
            None => Err(MetadataError::Protocol("no entry for the endpoint".into())),
        }
    }

    /// Any number of endpoints: one [`Lookup`] per ID, in order (duplicates
    /// included), asking in requests of at most
    /// [`MAX_ENDPOINT_IDS`] and again for what
    /// an answer could not hold.
    pub async fn lookup(&self, endpoint_ids: &[&str]) -> Result<Vec<Lookup>, MetadataError> {
        let mut out = Vec::with_capacity(endpoint_ids.len());
        while out.len() < endpoint_ids.len() {
            let start = out.len();
            let chunk = &endpoint_ids[start..(start + MAX_ENDPOINT_IDS).min(endpoint_ids.len())];
            let response = self.ask(chunk).await?;
            let listed = response.endpoints.len();
            let complete = match response.status_code {
                200 => true,
                PARTIAL => false,
                status_code => {
                    return Err(MetadataError::Refused {
                        status_code,
                        reason: response.reason_phrase.unwrap_or_default().into_owned(),
                    });
                }
            };
            if listed > chunk.len() || (complete && listed != chunk.len()) {
                return Err(MetadataError::Protocol(format!(
                    "{listed} endpoints listed for {} asked (status {})",
                    chunk.len(),
                    response.status_code
                )));
            }
            if listed == 0 {
                return Err(MetadataError::Protocol(
                    "a partial answer listing no endpoint".into(),
                ));
            }
            for (entry, asked) in response.endpoints.into_iter().zip(chunk) {
                if entry.endpoint_id != *asked {
                    return Err(MetadataError::Protocol(format!(
                        "endpoint {:?} listed where {asked:?} was asked",
                        entry.endpoint_id
                    )));
                }
                out.push(lookup_of(entry)?);
            }
        }
        Ok(out)
    }

    async fn ask(&self, ids: &[&str]) -> Result<EndpointMetadataResponse<'static>, MetadataError> {
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let request = EndpointMetadataRequest {
            correlation_id: uuid::Uuid::new_v4().to_string().into(),
            timestamp: crate::now().0,
            timeout: timeout_ms,
            endpoint_ids: ids.iter().map(|id| (*id).into()).collect(),
        };
        let reply = self
            .bus
            .request(&self.subject, Bytes::from(request.to_vec()), self.timeout)
            .await?;
        let response = EndpointMetadataResponse::decode(&reply.payload)?.into_owned();
        if response.correlation_id != request.correlation_id {
            return Err(MetadataError::Protocol(format!(
                "correlation ID {:?} answers {:?}",
                response.correlation_id, request.correlation_id
            )));
        }
        Ok(response)
    }
}

fn lookup_of(entry: EndpointMetadata<'_>) -> Result<Lookup, MetadataError> {
    let reason = || {
        entry
            .reason_phrase
            .as_deref()
            .unwrap_or_default()
            .to_owned()
    };
    Ok(match entry.status_code {
        200 => {
            let (Some(app), Some(text)) = (&entry.app_version_name, &entry.metadata) else {
                return Err(MetadataError::Protocol(format!(
                    "endpoint {:?} found without app version or metadata",
                    entry.endpoint_id
                )));
            };
            let metadata = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(MetadataError::Protocol(format!(
                        "metadata of endpoint {:?} is not a JSON object",
                        entry.endpoint_id
                    )));
                }
            };
            Lookup::Found(EndpointInfo {
                endpoint_id: entry.endpoint_id.into_owned(),
                app_version_name: app.to_string(),
                metadata,
            })
        }
        404 => Lookup::NotFound,
        status_code => Lookup::Refused {
            status_code,
            reason: reason(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kaa_bus::MemoryBus;

    /// A fake register that answers every request with what `answer` makes of it.
    async fn fake_register(
        bus: &MemoryBus,
        answer: impl Fn(EndpointMetadataRequest<'_>) -> EndpointMetadataResponse<'static>
        + Send
        + 'static,
    ) {
        let mut requests = bus
            .subscribe("kaa.v1.service.epr.ecap.ep-metadata-request", Some("epr"))
            .await
            .unwrap();
        let bus = bus.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let request = EndpointMetadataRequest::decode(&message.payload).unwrap();
                let response = answer(request).to_vec();
                bus.publish(&message.reply_to.unwrap(), Bytes::from(response))
                    .await
                    .unwrap();
            }
        });
    }

    fn answer_all(
        request: EndpointMetadataRequest<'_>,
        max_listed: usize,
    ) -> EndpointMetadataResponse<'static> {
        let n = request.endpoint_ids.len();
        EndpointMetadataResponse {
            correlation_id: request.correlation_id.into_owned().into(),
            endpoints: request
                .endpoint_ids
                .iter()
                .take(max_listed)
                .map(|id| match id.as_ref() {
                    "gone" => EndpointMetadata::refused(id.to_string(), 404, "not registered"),
                    "big" => EndpointMetadata::refused(id.to_string(), 413, "too large"),
                    _ => EndpointMetadata::found(
                        id.to_string(),
                        "v1",
                        format!("{{\"id\":\"{id}\"}}"),
                    ),
                })
                .collect(),
            status_code: if n > max_listed { PARTIAL } else { 200 },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn lookups_in_order_across_partial_answers_and_batches() {
        let bus = MemoryBus::new();
        // At most 7 endpoints per answer: the client asks again for the rest.
        fake_register(&bus, |r| answer_all(r, 7)).await;
        let client = MetadataClient::new(Arc::new(bus), "epr").unwrap();
        let ids: Vec<String> = (0..2500).map(|i| format!("ep-{i}")).collect();
        let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
        asked[3] = "gone";
        asked[10] = "big";
        asked[11] = "ep-0";
        let got = client.lookup(&asked).await.unwrap();
        assert_eq!(got.len(), asked.len());
        assert_eq!(got[3], Lookup::NotFound);
        assert!(
            matches!(&got[10], Lookup::Refused { status_code: 413, reason } if reason == "too large")
        );
        assert_eq!(got[11], got[0]);
        let Lookup::Found(last) = &got[2499] else {
            panic!("{:?}", got[2499])
        };
        assert_eq!(last.endpoint_id, "ep-2499");
        assert_eq!(last.metadata["id"], "ep-2499");
        assert_eq!(client.endpoint("gone").await.unwrap(), None);
        assert_eq!(client.lookup(&[]).await.unwrap(), []);
    }

    #[tokio::test]
    async fn answers_that_break_the_protocol_are_errors() {
        for (name, answer) in [
            (
                "refused",
                (|r: EndpointMetadataRequest<'_>| EndpointMetadataResponse {
                    correlation_id: r.correlation_id.into_owned().into(),
                    status_code: 400,
                    reason_phrase: Some("too many".into()),
                    ..Default::default()
                })
                    as fn(EndpointMetadataRequest<'_>) -> EndpointMetadataResponse<'static>,
            ),
            ("no progress", |r| answer_all(r, 0)),
            ("other correlation ID", |r| EndpointMetadataResponse {
                correlation_id: "other".into(),
                ..answer_all(r, 10)
            }),
            ("another endpoint", |r| {
                let mut a = answer_all(r, 10);
                a.endpoints[0].endpoint_id = "someone-else".into();
                a
            }),
            ("metadata not an object", |r| {
                let mut a = answer_all(r, 10);
                a.endpoints[0].metadata = Some("[1]".into());
                a
            }),
            ("fewer listed though complete", |r| {
                let mut a = answer_all(r, 10);
                a.endpoints.pop();
                a
            }),
        ] {
            let bus = MemoryBus::new();
            fake_register(&bus, answer).await;
            let client = MetadataClient::new(Arc::new(bus), "epr").unwrap();
            let err = client.lookup(&["a", "b"]).await.unwrap_err();
            match (name, &err) {
                (
                    "refused",
                    MetadataError::Refused {
                        status_code: 400,
                        reason,
                    },
                ) => {
                    assert_eq!(reason, "too many")
                }
                ("refused", other) => panic!("{other:?}"),
                (_, MetadataError::Protocol(_)) => {}
                (_, other) => panic!("{name}: {other:?}"),
            }
        }
        // Nobody answers: a bus error, after the timeout.
        let client = MetadataClient::new(Arc::new(MemoryBus::new()), "epr")
            .unwrap()
            .with_timeout(Duration::from_millis(50));
        assert!(matches!(
            client.lookup(&["a"]).await,
            Err(MetadataError::Bus(_))
        ));
        assert!(MetadataClient::new(Arc::new(MemoryBus::new()), "a.b").is_err());
    }
}
