//! The OpenAPI document of the REST API, generated from the handlers'
//! annotations (utoipa), served at `/openapi.json` and committed as
//! `docs/api/openapi.json` (a test fails when the two differ).

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{commands, files, sandboxes, snapshots};

#[derive(OpenApi)]
#[openapi(
    info(title = "IronClaw sandbox API", description = "Sandboxes an agent can hold: microVMs with no network, created from a warm pool. See docs/api.md."),
    paths(
        sandboxes::create, sandboxes::list, sandboxes::inspect, sandboxes::set_timeout, sandboxes::destroy,
        commands::exec, commands::exec_stream, commands::start, commands::list, commands::inspect,
        commands::output, commands::stream, commands::stdin, commands::signal, commands::wait,
        files::upload, files::download, files::stat, files::list, files::mkdir, files::remove,
        files::tar_out, files::tar_in,
        snapshots::create, snapshots::fork, snapshots::pause, snapshots::resume,
        snapshots::list, snapshots::inspect, snapshots::remove,
    ),
    modifiers(&BearerToken, &UniqueOperationIds),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on TCP; the unix socket checks the caller's uid instead.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Operation ids are the handlers' names, which repeat across tags
/// (`list`); OpenAPI wants them unique: `<tag>_<name>`.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
                if let (Some(tag), Some(id)) = (tag, op.operation_id.as_mut()) {
                    *id = format!("{tag}_{id}");
                }
            }
        }
    }
}

/// The document as pretty JSON (what `docs/api/openapi.json` holds).
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes");
    text.push('\n');
    text
}

pub async fn serve() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}
