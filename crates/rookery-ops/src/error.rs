//! Error codes to HTTP statuses, and JSON error responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rookery::{Code, Error, Serializer};

/// The HTTP status for a Rookery error code: `RK-400` → 400, `RK-401` → 401, `RK-404` → 404,
/// `RK-408` → 408, `RK-429` → 429, `RK-500` → 500, `RK-503` → 503. An application's own code
/// (e.g. `ROOM-FULL`) is a client-visible failure of the request: 400.
pub fn status_for(code: &Code) -> StatusCode {
    match code {
        Code::BadRequest | Code::App(_) => StatusCode::BAD_REQUEST,
        Code::NotLoggedIn => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Timeout => StatusCode::REQUEST_TIMEOUT,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON response with the given status and body bytes.
pub(crate) fn json_bytes(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

/// A framework error as `{"code","msg"}` with its mapped status.
pub(crate) fn error_response(e: &Error) -> Response {
    json_bytes(status_for(e.kind()), e.encode(Serializer::Json))
}

/// An HTTP-layer error (no framework code of its own): `{"code":"RK-<status>","msg"}`.
pub(crate) fn http_error(status: StatusCode, msg: impl Into<String>) -> Response {
    let e = Error::custom(format!("RK-{}", status.as_u16()), msg);
    json_bytes(status, e.encode(Serializer::Json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_standard_code() {
        for (code, status) in [
            ("RK-400", 400),
            ("RK-401", 401),
            ("RK-404", 404),
            ("RK-408", 408),
            ("RK-429", 429),
            ("RK-500", 500),
            ("RK-503", 503),
            ("ROOM-FULL", 400),
            ("", 400),
        ] {
            let code = Code::from_wire(code);
            assert_eq!(status_for(&code).as_u16(), status, "{code}");
        }
    }
}
