//! The read API describes itself: `GET /openapi.json` is the committed
//! `docs/openapi/read.json`, an OpenAPI 3.1 document whose paths and methods are exactly the
//! read API's routes.

#[ntex::test]
async fn the_served_document_is_the_committed_one_and_matches_the_routes() {
    let committed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/read.json");
    testkit::openapi::check_routes(projections::api::configure, &committed).await;
}
