//! 4/ESP NATS subjects: where `ClientData` and `ExtensionData` are published, and
//! the filters their listeners subscribe with.
//!
//! - `ClientData` goes from a communication service to an extension service:
//!   `kaa.v1.service.{extension-instance}.esp.ClientData`, or, in an affinity
//!   session, the replica subject `kaa.v1.replica.{extension-replica}.esp.ClientData`.
//! - `ExtensionData` goes from an extension service to a communication service:
//!   `kaa.v1.service.{communication-instance}.esp.ExtensionData`, or
//!   `kaa.v1.replica.{communication-replica}.esp.ExtensionData`.
//!
//! A listener subscribes to both its instance-wide subject (in a queue group named
//! after its instance, so that one replica gets each message) and its replica
//! subject (no queue group): see [`ListenerFilters`].
//!
//! Every name is validated as a subject token ([`kaa_ism::subject::validate_token`]):
//! a name holding `.`, `*`, `>` or whitespace is an error, never escaped.
//!
//! ```
//! use kaa_esp::subject::{self, MessageType};
//!
//! let to_cmx = subject::client_data_subject("cmx")?;
//! assert_eq!(to_cmx.to_string(), "kaa.v1.service.cmx.esp.ClientData");
//!
//! let to_kpc_replica = subject::extension_data_replica_subject("kpc-7")?;
//! assert_eq!(to_kpc_replica.to_string(), "kaa.v1.replica.kpc-7.esp.ExtensionData");
//!
//! let cmx = subject::ListenerFilters::new("cmx", "cmx-1", MessageType::ClientData)?;
//! assert!(cmx.instance_wide.matches("kaa.v1.service.cmx.esp.ClientData"));
//! assert!(cmx.replica.matches("kaa.v1.replica.cmx-1.esp.ClientData"));
//! assert_eq!(cmx.queue_group, "cmx");
//!
//! assert_eq!(
//!     MessageType::of_subject("kaa.v1.replica.cmx-1.esp.ClientData"),
//!     Some(MessageType::ClientData)
//! );
//! # Ok::<(), kaa_ism::subject::SubjectError>(())
//! ```

use kaa_ism::subject::{ReplicaSubject, ServiceSubject, Subject, SubjectError, SubjectFilter};

/// The 3/ISM protocol name of 4/ESP, the subject token after the instance or replica.
pub const PROTOCOL: &str = "esp";

/// The two 4/ESP message types, as they appear in the last subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `ClientData`: communication service → extension service.
    ClientData,
    /// `ExtensionData`: extension service → communication service.
    ExtensionData,
}

impl MessageType {
    /// The subject token, `ClientData` or `ExtensionData`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::ClientData => "ClientData",
            MessageType::ExtensionData => "ExtensionData",
        }
    }

    /// The message type a received 4/ESP subject carries, instance-wide or replica;
    /// `None` for anything else (another protocol, a broadcast, an unknown type, or
    /// not a valid 3/ISM subject).
    pub fn of_subject(subject: &str) -> Option<MessageType> {
        let (protocol, message_type) = match Subject::parse(subject).ok()? {
            Subject::Service(s) => (s.protocol(), s.message_type()),
            Subject::Replica(r) => (r.protocol(), r.message_type()),
            Subject::Event(_) => return None,
        };
        if protocol != PROTOCOL {
            return None;
        }
        [MessageType::ClientData, MessageType::ExtensionData]
            .into_iter()
            .find(|t| t.as_str() == message_type)
    }
}

/// The instance-wide subject of a message type: `kaa.v1.service.{instance}.esp.{type}`.
pub fn service_subject(
    instance: &str,
    message_type: MessageType,
) -> Result<ServiceSubject<'_>, SubjectError> {
    ServiceSubject::new(instance, PROTOCOL, message_type.as_str())
}

/// The replica subject of a message type: `kaa.v1.replica.{replica}.esp.{type}`.
pub fn replica_subject(
    replica: &str,
    message_type: MessageType,
) -> Result<ReplicaSubject<'_>, SubjectError> {
    ReplicaSubject::new(replica, PROTOCOL, message_type.as_str())
}

/// `kaa.v1.service.{extension_instance}.esp.ClientData`: client data for an
/// extension service instance (e.g. `cmx`), any replica.
pub fn client_data_subject(extension_instance: &str) -> Result<ServiceSubject<'_>, SubjectError> {
    service_subject(extension_instance, MessageType::ClientData)
}

/// `kaa.v1.replica.{extension_replica}.esp.ClientData`: client data for one
/// extension replica, in an affinity session.
pub fn client_data_replica_subject(
    extension_replica: &str,
) -> Result<ReplicaSubject<'_>, SubjectError> {
    replica_subject(extension_replica, MessageType::ClientData)
}

/// `kaa.v1.service.{communication_instance}.esp.ExtensionData`: extension data for
/// a communication service instance (e.g. `kpc`), any replica.
pub fn extension_data_subject(
    communication_instance: &str,
) -> Result<ServiceSubject<'_>, SubjectError> {
    service_subject(communication_instance, MessageType::ExtensionData)
}

/// `kaa.v1.replica.{communication_replica}.esp.ExtensionData`: extension data for
/// one communication service replica, in an affinity session.
pub fn extension_data_replica_subject(
    communication_replica: &str,
) -> Result<ReplicaSubject<'_>, SubjectError> {
    replica_subject(communication_replica, MessageType::ExtensionData)
}

/// What a replica of a service subscribes with to receive one 4/ESP message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerFilters {
    /// `kaa.v1.service.{instance}.esp.{type}`: subscribe in [`ListenerFilters::queue_group`].
    pub instance_wide: SubjectFilter,
    /// `kaa.v1.replica.{replica}.esp.{type}`: subscribe without a queue group.
    pub replica: SubjectFilter,
    /// The queue group for the instance-wide subscription: the instance name, as
    /// 3/ISM recommends for load balancing across replicas.
    pub queue_group: String,
}

impl ListenerFilters {
    /// The filters for `message_type` of the service instance `instance`, replica
    /// `replica` (e.g. an extension receiving `ClientData`).
    pub fn new(
        instance: &str,
        replica: &str,
        message_type: MessageType,
    ) -> Result<Self, SubjectError> {
        let instance_wide =
            SubjectFilter::parse(&service_subject(instance, message_type)?.to_string())?;
        let replica_filter =
            SubjectFilter::parse(&replica_subject(replica, message_type)?.to_string())?;
        Ok(ListenerFilters {
            instance_wide,
            replica: replica_filter,
            queue_group: instance.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_subjects() {
        assert_eq!(
            client_data_subject("humidity-sensor-cmx-1")
                .unwrap()
                .to_string(),
            "kaa.v1.service.humidity-sensor-cmx-1.esp.ClientData"
        );
        assert_eq!(
            client_data_replica_subject("cmx-r2").unwrap().to_string(),
            "kaa.v1.replica.cmx-r2.esp.ClientData"
        );
        assert_eq!(
            extension_data_subject("kpc").unwrap().to_string(),
            "kaa.v1.service.kpc.esp.ExtensionData"
        );
        assert_eq!(
            extension_data_replica_subject("kpc-1").unwrap().to_string(),
            "kaa.v1.replica.kpc-1.esp.ExtensionData"
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", "a.b", "*", ">", "a b", "cmx\n"] {
            assert!(client_data_subject(name).is_err(), "{name:?}");
            assert!(client_data_replica_subject(name).is_err(), "{name:?}");
            assert!(extension_data_subject(name).is_err(), "{name:?}");
            assert!(extension_data_replica_subject(name).is_err(), "{name:?}");
            assert!(ListenerFilters::new(name, "r", MessageType::ClientData).is_err());
            assert!(ListenerFilters::new("i", name, MessageType::ClientData).is_err());
        }
    }

    #[test]
    fn listener_filters_match_only_their_subjects() {
        let f = ListenerFilters::new("kpc", "kpc-1", MessageType::ExtensionData).unwrap();
        assert_eq!(
            f.instance_wide.as_str(),
            "kaa.v1.service.kpc.esp.ExtensionData"
        );
        assert_eq!(f.replica.as_str(), "kaa.v1.replica.kpc-1.esp.ExtensionData");
        assert!(!f.instance_wide.matches("kaa.v1.service.kpc.esp.ClientData"));
        assert!(
            !f.instance_wide
                .matches("kaa.v1.service.kpc2.esp.ExtensionData")
        );
        assert!(!f.replica.matches("kaa.v1.replica.kpc-2.esp.ExtensionData"));
        assert_eq!(f.queue_group, "kpc");
    }

    #[test]
    fn message_type_of_subject() {
        let cases = [
            (
                "kaa.v1.service.cmx.esp.ClientData",
                Some(MessageType::ClientData),
            ),
            (
                "kaa.v1.replica.kpc-1.esp.ExtensionData",
                Some(MessageType::ExtensionData),
            ),
            ("kaa.v1.service.cmx.esp.Other", None),
            ("kaa.v1.service.cmx.cdtp.ClientData", None),
            ("kaa.v1.events.cmx.endpoint.config.ClientData", None),
            ("kaa.v1.service.cmx.esp", None),
            ("nonsense", None),
        ];
        for (subject, expected) in cases {
            assert_eq!(MessageType::of_subject(subject), expected, "{subject}");
        }
        for t in [MessageType::ClientData, MessageType::ExtensionData] {
            let s = service_subject("x", t).unwrap().to_string();
            assert_eq!(MessageType::of_subject(&s), Some(t));
            let s = replica_subject("x", t).unwrap().to_string();
            assert_eq!(MessageType::of_subject(&s), Some(t));
        }
    }
}
