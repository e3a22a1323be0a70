//! Typed payloads: how handler arguments are decoded and results encoded.
//!
//! A handler's argument implements [`FromPayload`] and its result [`ToPayload`]. The wrappers
//! choose the format:
//! - [`Json<T>`]: serde JSON (for JSON sessions);
//! - [`Proto<T>`]: prost protobuf (for protobuf sessions);
//! - [`Msg<T>`]: a type that is both serde and prost; uses the session's serializer;
//! - [`Raw`]: the bytes as they are (custom codecs);
//! - `()`: ignores the argument / answers `{}` (JSON) or an empty message (protobuf).

use bytes::Bytes;
use rookery_protocol::Serializer;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Decodes a handler argument from a payload in the session's serializer.
pub trait FromPayload: Sized + Send + 'static {
    /// Decodes; failures are `RK-400`.
    fn from_payload(serializer: Serializer, payload: Bytes) -> Result<Self, Error>;
}

/// Encodes a handler result or a push in the session's serializer.
pub trait ToPayload: Send {
    /// Encodes; failures are `RK-500`.
    fn to_payload(&self, serializer: Serializer) -> Result<Bytes, Error>;
}

/// A serde value carried as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json<T>(pub T);

/// A prost message carried as protobuf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proto<T>(pub T);

/// A value that is both serde and prost, carried in whichever serializer the session chose.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Msg<T>(pub T);

/// Payload bytes untouched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raw(pub Bytes);

fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    // An empty payload reads as `{}` so that pomelo clients sending nothing still reach handlers
    // whose argument has only optional fields.
    let payload: &[u8] = if payload.is_empty() { b"{}" } else { payload };
    serde_json::from_slice(payload).map_err(|e| Error::bad_request(format!("invalid JSON: {e}")))
}

/// Largest encoding buffer a thread keeps between calls; a larger one is freed after use.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Reused encoding buffer: values are serialized into it and copied out once, at their exact
    /// size, instead of growing a fresh `Vec` (and turning it into `Bytes`) every time.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn encode_json<T: Serialize + ?Sized>(v: &T) -> Result<Bytes, Error> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = serde_json::to_writer(&mut *buf, v)
                .map(|()| Bytes::copy_from_slice(&buf))
                .map_err(Error::internal);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            out
        }
        // A `Serialize` impl that encodes a payload itself: it gets its own buffer.
        Err(_) => serde_json::to_vec(v)
            .map(Bytes::from)
            .map_err(Error::internal),
    })
}

fn decode_proto<T: prost::Message + Default>(payload: Bytes) -> Result<T, Error> {
    T::decode(payload).map_err(|e| Error::bad_request(format!("invalid protobuf: {e}")))
}

fn wrong_serializer(expected: &str) -> Error {
    Error::bad_request(format!("this route takes {expected} payloads"))
}

impl<T: DeserializeOwned + Send + 'static> FromPayload for Json<T> {
    fn from_payload(serializer: Serializer, payload: Bytes) -> Result<Self, Error> {
        match serializer {
            Serializer::Json => decode_json(&payload).map(Json),
            Serializer::Protobuf => Err(wrong_serializer("JSON")),
        }
    }
}

impl<T: Serialize + Send + Sync> ToPayload for Json<T> {
    fn to_payload(&self, _serializer: Serializer) -> Result<Bytes, Error> {
        encode_json(&self.0)
    }
}

impl<T: prost::Message + Default + Send + 'static> FromPayload for Proto<T> {
    fn from_payload(serializer: Serializer, payload: Bytes) -> Result<Self, Error> {
        match serializer {
            Serializer::Protobuf => decode_proto(payload).map(Proto),
            Serializer::Json => Err(wrong_serializer("protobuf")),
        }
    }
}

impl<T: prost::Message + Send + Sync> ToPayload for Proto<T> {
    fn to_payload(&self, _serializer: Serializer) -> Result<Bytes, Error> {
        Ok(Bytes::from(self.0.encode_to_vec()))
    }
}

impl<T> FromPayload for Msg<T>
where
    T: DeserializeOwned + prost::Message + Default + Send + 'static,
{
    fn from_payload(serializer: Serializer, payload: Bytes) -> Result<Self, Error> {
        match serializer {
            Serializer::Json => decode_json(&payload).map(Msg),
            Serializer::Protobuf => decode_proto(payload).map(Msg),
        }
    }
}

impl<T: Serialize + prost::Message + Send + Sync> ToPayload for Msg<T> {
    fn to_payload(&self, serializer: Serializer) -> Result<Bytes, Error> {
        match serializer {
            Serializer::Json => encode_json(&self.0),
            Serializer::Protobuf => Ok(Bytes::from(self.0.encode_to_vec())),
        }
    }
}

impl FromPayload for Raw {
    fn from_payload(_serializer: Serializer, payload: Bytes) -> Result<Self, Error> {
        Ok(Raw(payload))
    }
}

impl ToPayload for Raw {
    fn to_payload(&self, _serializer: Serializer) -> Result<Bytes, Error> {
        Ok(self.0.clone())
    }
}

impl FromPayload for () {
    fn from_payload(_serializer: Serializer, _payload: Bytes) -> Result<Self, Error> {
        Ok(())
    }
}

impl ToPayload for () {
    fn to_payload(&self, serializer: Serializer) -> Result<Bytes, Error> {
        Ok(match serializer {
            Serializer::Json => Bytes::from_static(b"{}"),
            Serializer::Protobuf => Bytes::new(),
        })
    }
}

impl<T: ToPayload + Sync> ToPayload for &T {
    fn to_payload(&self, serializer: Serializer) -> Result<Bytes, Error> {
        (**self).to_payload(serializer)
    }
}

/// Encodes a payload once per serializer, for fan-out to many sessions.
pub(crate) struct EncodedOnce<'a, P: ?Sized> {
    payload: &'a P,
    json: Option<Result<Bytes, Error>>,
    proto: Option<Result<Bytes, Error>>,
}

impl<'a, P: ToPayload + ?Sized> EncodedOnce<'a, P> {
    pub(crate) fn new(payload: &'a P) -> Self {
        Self {
            payload,
            json: None,
            proto: None,
        }
    }

    pub(crate) fn get(&mut self, serializer: Serializer) -> Result<Bytes, Error> {
        let slot = match serializer {
            Serializer::Json => &mut self.json,
            Serializer::Protobuf => &mut self.proto,
        };
        slot.get_or_insert_with(|| self.payload.to_payload(serializer))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Join {
        room: String,
    }

    #[test]
    fn json_roundtrip_and_errors() {
        let Json(j): Json<Join> =
            FromPayload::from_payload(Serializer::Json, Bytes::from_static(br#"{"room":"r"}"#))
                .unwrap();
        assert_eq!(j.room, "r");
        let e =
            <Json<Join>>::from_payload(Serializer::Json, Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(e.code(), "RK-400");
        let e =
            <Json<Join>>::from_payload(Serializer::Json, Bytes::from_static(b"{bad")).unwrap_err();
        assert_eq!(e.code(), "RK-400");
        let e = <Json<Join>>::from_payload(Serializer::Protobuf, Bytes::new()).unwrap_err();
        assert_eq!(e.code(), "RK-400");
        assert_eq!(
            &Json(j).to_payload(Serializer::Json).unwrap()[..],
            br#"{"room":"r"}"#
        );
        assert_eq!(&().to_payload(Serializer::Json).unwrap()[..], b"{}");
    }

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
    struct Both {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[test]
    fn msg_follows_session_serializer() {
        let v = Msg(Both { name: "x".into() });
        let pb = v.to_payload(Serializer::Protobuf).unwrap();
        let js = v.to_payload(Serializer::Json).unwrap();
        assert_eq!(&js[..], br#"{"name":"x"}"#);
        let Msg(back) = <Msg<Both>>::from_payload(Serializer::Protobuf, pb).unwrap();
        assert_eq!(back.name, "x");
        let Msg(back) = <Msg<Both>>::from_payload(Serializer::Json, js).unwrap();
        assert_eq!(back.name, "x");
    }
}
