//! Provisioning simulated devices in an endpoint register (the `kaa-epr` REST API)
//! before they connect: the `device` binary's `--register URL` with `run
//! --provision <endpoint ID>` or `load --provision`.
//!
//! One device is `POST /api/v1/endpoints` with `"issueToken": true`; many are
//! `POST /api/v1/endpoints/batch` with `"issueTokens": true`, at most
//! [`MAX_BATCH`] endpoints a call (the register's default limit). Tokens are
//! shown once by the register; the simulator keeps them in memory only. What it
//! prints about provisioning names the endpoint ID and the token ID; a device's
//! topics (which `run` prints) carry its token, as 1/KP has it.
//!
//! ```no_run
//! use kaa_examples::device::provision::Register;
//!
//! # async fn demo() -> Result<(), kaa_examples::device::provision::ProvisionError> {
//! let register = Register::new("http://127.0.0.1:8082", None)?;
//! let device = register.provision("kettle-1", "demo-v1").await?;
//! println!("{} has token {}", device.endpoint_id, device.token_id);
//! # Ok(()) }
//! ```

use std::fmt;

use serde_json::{Value, json};

/// The most endpoints in one batch call (`epr.limits.max-batch`'s default).
pub const MAX_BATCH: usize = 10_000;

/// Why provisioning failed: one line naming the call and the register's message.
#[derive(Debug, thiserror::Error)]
#[error("endpoint register: {0}")]
pub struct ProvisionError(String);

/// A provisioned endpoint and its newly issued token.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvisionedDevice {
    /// The endpoint ID.
    pub endpoint_id: String,
    /// The token's ID (for suspend, reactivate, revoke).
    pub token_id: String,
    /// The endpoint token the device connects with (secret).
    pub token: String,
}

impl fmt::Debug for ProvisionedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionedDevice")
            .field("endpoint_id", &self.endpoint_id)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

/// A client of an endpoint register's REST API.
#[derive(Clone)]
pub struct Register {
    api: String,
    bearer: Option<String>,
    client: reqwest::Client,
}

impl fmt::Debug for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Register")
            .field("api", &self.api)
            .field("bearer", &self.bearer.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Register {
    /// The register at `url` (`http://host:port`, with or without `/api/v1`),
    /// calling with `bearer` as API token when the register requires one.
    pub fn new(url: &str, bearer: Option<String>) -> Result<Self, ProvisionError> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ProvisionError(format!(
                "--register {url:?}: expected http://host:port"
            )));
        }
        let api = if base.ends_with("/api/v1") {
            base.to_owned()
        } else {
            format!("{base}/api/v1")
        };
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| ProvisionError(e.to_string()))?;
        Ok(Self {
            api,
            bearer,
            client,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ProvisionError> {
        let mut request = self.client.post(format!("{}{path}", self.api)).json(&body);
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProvisionError(format!("POST {path}: {e}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            return Err(ProvisionError(format!("POST {path}: {status}: {message}")));
        }
        Ok(body)
    }

    /// Registers `endpoint_id` under `app_version` and issues its token.
    pub async fn provision(
        &self,
        endpoint_id: &str,
        app_version: &str,
    ) -> Result<ProvisionedDevice, ProvisionError> {
        let body = self
            .post(
                "/endpoints",
                json!({"endpointId": endpoint_id, "appVersionName": app_version, "issueToken": true}),
            )
            .await?;
        device(&body["token"], endpoint_id)
    }

    /// Registers every endpoint of `endpoint_ids` under `app_version` with a
    /// token each, [`MAX_BATCH`] per call (each call all or none), in order.
    pub async fn provision_batch(
        &self,
        endpoint_ids: &[String],
        app_version: &str,
    ) -> Result<Vec<ProvisionedDevice>, ProvisionError> {
        let mut devices = Vec::with_capacity(endpoint_ids.len());
        for chunk in endpoint_ids.chunks(MAX_BATCH) {
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|id| json!({"endpointId": id, "appVersionName": app_version}))
                .collect();
            let body = self
                .post(
                    "/endpoints/batch",
                    json!({"endpoints": endpoints, "issueTokens": true}),
                )
                .await?;
            let listed = body["endpoints"].as_array().cloned().unwrap_or_default();
            if listed.len() != chunk.len() {
                return Err(ProvisionError(format!(
                    "POST /endpoints/batch: {} endpoints sent, {} in the answer",
                    chunk.len(),
                    listed.len()
                )));
            }
            for (id, entry) in chunk.iter().zip(&listed) {
                devices.push(device(entry, id)?);
            }
        }
        Ok(devices)
    }
}

/// `{"tokenId", "token"}` (also with `endpointId`) from an answer.
fn device(entry: &Value, endpoint_id: &str) -> Result<ProvisionedDevice, ProvisionError> {
    let field = |name: &str| {
        entry[name].as_str().map(str::to_owned).ok_or_else(|| {
            ProvisionError(format!(
                "the answer for {endpoint_id:?} has no {name:?} (was a token issued?)"
            ))
        })
    };
    Ok(ProvisionedDevice {
        endpoint_id: endpoint_id.to_owned(),
        token_id: field("tokenId")?,
        token: field("token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_debug_output_hide_secrets() {
        let r = Register::new("http://127.0.0.1:8082/", Some("admin-secret".into())).unwrap();
        assert_eq!(r.api, "http://127.0.0.1:8082/api/v1");
        assert!(!format!("{r:?}").contains("admin-secret"));
        let r = Register::new("http://h:1/api/v1", None).unwrap();
        assert_eq!(r.api, "http://h:1/api/v1");
        assert!(Register::new("127.0.0.1:8082", None).is_err());
        let d = device(&json!({"tokenId": "t-1", "token": "very-secret"}), "ep").unwrap();
        assert!(!format!("{d:?}").contains("very-secret"));
        assert!(device(&json!({"tokenId": "t-1"}), "ep").is_err());
    }
}
