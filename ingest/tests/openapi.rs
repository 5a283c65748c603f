//! The edge describes itself: `GET /openapi.json` is the committed `docs/openapi/ingest.json`,
//! an OpenAPI 3.1 document whose paths and methods are exactly the edge's routes.

#[ntex::test]
async fn the_served_document_is_the_committed_one_and_matches_the_routes() {
    let committed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/ingest.json");
    testkit::openapi::check_routes(ingest::routes::configure, &committed).await;
}

/// The document's `email` pattern says exactly what the edge accepts: for each address, the
/// pattern matches it exactly when the edge takes a body with it (a phone given, so an empty
/// e-mail is fine). That every example in the documents fits its schema is checked by an
/// independent linter, Redocly (`deploy/tests/redocly/run`, part of `deploy/test`).
#[test]
fn the_email_pattern_accepts_what_the_edge_accepts() {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/ingest.json"),
    )
    .unwrap();
    let document: serde_json::Value = serde_json::from_str(&file).unwrap();
    let pattern = document
        .pointer("/components/schemas/RegistrationRequest/properties/email/pattern")
        .and_then(|p| p.as_str())
        .expect("the e-mail has a pattern");
    let schema = regex::Regex::new(pattern).expect("the pattern is a regular expression");
    let samples = [
        "jan@example.pl",
        "a@b.c",
        "jan.kowalski+szczepienie@poczta.example.com.pl",
        "ü@żółw.pl",
        "a@b..c",
        " jan@example.pl\t",
        "\u{a0}jan@example.pl\u{3000}",
        "\u{85}jan@example.pl\u{2029}",
        "\u{feff}jan@example.pl",
        "jan\u{200b}@example.pl",
        "",
        "   ",
        "a@b",
        "@b.c",
        "a@.b.c",
        "a@b.c.",
        "a@b.",
        "a@@b.c",
        "a@b@c.d",
        "jan kowalski@example.pl",
        "jan@exa\u{85}mple.pl",
        "jan@example.pl\u{7f}",
        "jan\u{2003}@example.pl",
        "jan@example",
        "no-at-sign",
    ];
    // A fixed day before the slot, so the test does not expire.
    let today = chrono::NaiveDate::from_ymd_opt(2027, 2, 1).unwrap();
    for email in samples {
        let body = serde_json::json!({
            "national_id": "44051401359", "full_name": "Jan Kowalski",
            "birth_date": "1944-05-14", "email": email, "phone": "+48 600 000 000",
            "region": "mazowieckie", "location": "warszawa-narodowy", "date": "2027-03-01",
        });
        let edge = ingest::validate::parse_registration(
            body.to_string().as_bytes(),
            Default::default(),
            &Default::default(),
            today,
        );
        assert_eq!(
            schema.is_match(email),
            edge.is_ok(),
            "{email:?}: the edge says {edge:?}"
        );
    }
}
