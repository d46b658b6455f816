use super::BackendError;

#[test]
fn a_url_of_the_wrong_scheme_is_said_to_be_one() {
    let http_to_tls = super::scheme_hint("client error (SendRequest): invalid HTTP version parsed");
    assert!(http_to_tls.contains("https://"), "{http_to_tls}");
    let tls_to_http = super::scheme_hint(
        "client error (Connect): received corrupt message of type InvalidContentType",
    );
    assert!(tls_to_http.contains("plain http://"), "{tls_to_http}");
    assert_eq!(super::scheme_hint("connection refused"), "");
}

#[test]
fn a_status_error_says_what_the_control_plane_said() {
    let e = BackendError::Status {
        status: 404,
        code: "NOT_FOUND".into(),
        message: "region not found".into(),
    };
    assert_eq!(
        e.to_string(),
        "control plane answered 404: NOT_FOUND (region not found)"
    );
    let bare = BackendError::Status {
        status: 502,
        code: "UNKNOWN".into(),
        message: String::new(),
    };
    assert_eq!(bare.to_string(), "control plane answered 502: UNKNOWN");
}

/// A refused certificate is a setting to change, not an outage: its
/// text says "not trusted" and names the settings, where an outage
/// says "unreachable".
#[test]
fn a_refused_certificate_reads_as_not_trusted() {
    let cert = BackendError::Unreachable(
        "client error (Connect): invalid peer certificate: UnknownIssuer".into(),
    );
    assert!(cert.is_untrusted());
    let said = cert.to_string();
    assert!(
        said.starts_with("control plane not trusted") && said.contains("--backend-ca"),
        "{said}"
    );
    let down = BackendError::Unreachable("connection refused".into());
    assert!(!down.is_untrusted());
    assert_eq!(
        down.to_string(),
        "control plane unreachable: connection refused"
    );
}
