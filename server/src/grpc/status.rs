//! Backend errors to gRPC statuses.

use tonic::Status;

use crate::backend::BackendError;

/// Maps a backend error to the gRPC status a client can act on.
pub fn to_status(backend: &str, err: BackendError) -> Status {
    match err {
        BackendError::Unsupported(op) => {
            Status::unimplemented(format!("the `{backend}` backend does not support `{op}`"))
        }
        e @ BackendError::NotFound { .. } => Status::not_found(e.to_string()),
        BackendError::InvalidArgument(m) => Status::invalid_argument(m),
        BackendError::FailedPrecondition(m) => Status::failed_precondition(m),
        BackendError::ResourceExhausted(m) => Status::resource_exhausted(m),
        BackendError::Internal(m) => Status::internal(format!("`{backend}` backend: {m}")),
        e @ BackendError::PlatformLimit { .. } => Status::unimplemented(format!("`{backend}` backend: {e}")),
        BackendError::Unauthenticated(m) => Status::unauthenticated(m),
        BackendError::PermissionDenied(m) => Status::permission_denied(m),
        BackendError::AlreadyExists(m) => Status::already_exists(m),
        BackendError::Unavailable(m) => Status::unavailable(m),
        BackendError::Absent(m) => Status::not_found(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_has_its_code() {
        let s = to_status("mock", BackendError::Unsupported("room_qrcode"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(s.message(), "the `mock` backend does not support `room_qrcode`");
        let s = to_status("mock", BackendError::not_found("contact", "wxid_x"));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "contact `wxid_x` not found"));
        assert_eq!(to_status("m", BackendError::InvalidArgument("x".into())).code(), Code::InvalidArgument);
        assert_eq!(to_status("m", BackendError::FailedPrecondition("x".into())).code(), Code::FailedPrecondition);
        assert_eq!(to_status("m", BackendError::ResourceExhausted("x".into())).code(), Code::ResourceExhausted);
        assert_eq!(to_status("m", BackendError::Internal("x".into())).code(), Code::Internal);
        let s = to_status("oa", BackendError::PlatformLimit { op: "room_list", reason: "no groups" });
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unimplemented, "`oa` backend: `room_list` is impossible here: no groups")
        );
        assert_eq!(to_status("m", BackendError::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(to_status("m", BackendError::PermissionDenied("x".into())).code(), Code::PermissionDenied);
        assert_eq!(to_status("m", BackendError::AlreadyExists("x".into())).code(), Code::AlreadyExists);
        assert_eq!(to_status("m", BackendError::Unavailable("x".into())).code(), Code::Unavailable);
    }
}
