//! What every route of the document shares, stated once: the security
//! schemes and which route takes which credential, and the refusals every
//! route can answer (all in the `{"error": …}` envelope).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response, ResponseBuilder};

/// Adds the security schemes, per-route requirements and common refusals.
pub(super) struct Contract;

/// Gateway and node tokens (`registerGatewayNode`, `registerOutlineNode`).
const MACHINE: &str = "machine_token";
/// Device JWTs from `/api/v1/auth/device-token`.
const DEVICE_JWT: &str = "device_jwt";
/// A device's opaque access token (`registerDevice`).
const DEVICE_TOKEN: &str = "device_access_token";
/// The one-time token of an enrollment string (`httvps gateway|node add`).
const ENROLLMENT: &str = "enrollment_token";

/// Which credentials a route takes (alternatives); none: public.
fn credentials(path: &str) -> &'static [&'static str] {
    match path {
        "/api/v1/health" => &[],
        "/api/v1/auth/validate-device" | "/api/v1/nodes/assign-outline" => &[MACHINE, DEVICE_JWT],
        "/api/v1/auth/device-token" => &[DEVICE_TOKEN],
        "/api/v1/enroll" => &[ENROLLMENT],
        _ => &[MACHINE],
    }
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The refusal of a spent allowance: its envelope and when to retry.
fn throttled(description: &str) -> RefOr<Response> {
    let RefOr::T(mut response) = error(description) else {
        unreachable!("error() builds the response inline")
    };
    let seconds = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .build();
    response.headers.insert(
        "Retry-After".to_owned(),
        utoipa::openapi::HeaderBuilder::new()
            .schema(seconds)
            .description(Some("Whole seconds until the allowance has room again."))
            .build(),
    );
    RefOr::T(response)
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| error(description));
}

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |format: &str, what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            MACHINE,
            bearer(
                "opaque",
                "A gateway's or node's token, shown once at registration.",
            ),
        );
        components.add_security_scheme(
            DEVICE_JWT,
            bearer(
                "JWT",
                "A device JWT from /api/v1/auth/device-token (15 minutes).",
            ),
        );
        components.add_security_scheme(
            DEVICE_TOKEN,
            bearer("opaque", "A device's access token, from registerDevice."),
        );
        components.add_security_scheme(
            ENROLLMENT,
            bearer(
                "opaque",
                "The one-time token inside an enrollment string (httvps gateway|node add); spent by its first use.",
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let creds = credentials(path);
            let ops = [
                (item.get.as_mut(), false),
                (item.post.as_mut(), true),
                (item.put.as_mut(), true),
                (item.delete.as_mut(), false),
            ];
            for (op, has_body) in ops {
                let Some(op) = op else { continue };
                if !creds.is_empty() {
                    op.security = Some(
                        creds
                            .iter()
                            .map(|c| SecurityRequirement::new(*c, Vec::<String>::new()))
                            .collect(),
                    );
                    add(op, "401", "No valid credential (checked before the body).");
                    add(op, "403", "The credential may not use this route.");
                    op.responses.responses.insert(
                        "429".to_owned(),
                        throttled("Too many attempts (from this source, or for this device); see Retry-After."),
                    );
                }
                // Every route, with a body or not: the limit comes first.
                add(op, "413", "A body larger than 64 KiB (declared or sent).");
                if has_body {
                    add(op, "400", "The body is not a JSON object of this shape.");
                    add(
                        op,
                        "408",
                        "The body did not arrive within the body deadline.",
                    );
                }
                add(op, "405", "Another method than the one documented.");
                add(op, "503", "The database is unavailable.");
            }
        }
    }
}
