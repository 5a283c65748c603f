//! Personal data at rest, and the pipeline under per-service NATS identities: citizens'
//! national ids, names, e-mails and phone numbers go through every service (edge,
//! reservation, verification, notification, projections, each as its own NATS user), then
//! the JetStream store and the SurrealKV files are searched byte by byte for each value and
//! for each unkeyed hash of it, and hold none.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use serde_json::json;

use crate::helpers::*;

/// What is searched for: a label for the failure message, and the bytes.
type Needle = (String, Vec<u8>);

/// The forms a value could leak in: itself, and unkeyed hashes or encodings of it. A hash's
/// first 16 bytes (32 hex digits) also catch a truncated one, as citizen keys are.
fn forms(label: &str, value: &[u8]) -> Vec<Needle> {
    let digest = Sha256::digest(value);
    let hex = streams::crypto::to_hex(&digest);
    let mut needles = vec![
        (format!("{label} in clear"), value.to_vec()),
        (
            format!("{label} as SHA-256 hex"),
            hex.as_bytes()[..32].to_vec(),
        ),
        (
            format!("{label} as SHA-256 HEX"),
            hex[..32].to_ascii_uppercase().into_bytes(),
        ),
        (format!("{label} as raw SHA-256"), digest[..16].to_vec()),
    ];
    if value.len() >= 6 {
        // Whole base64 groups only: a value inside a larger base64 text is still found.
        let whole = value.len() / 3 * 3;
        for (name, engine) in [
            ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
            (
                "base64url",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ),
        ] {
            needles.push((
                format!("{label} as {name}"),
                engine.encode(&value[..whole]).into_bytes(),
            ));
        }
    }
    needles
}

/// Every needle found in any file under `dir`: (needle label, file).
fn search(dir: &Path, needles: &[Needle]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for (label, needle) in needles {
            if contains(&bytes, needle) {
                found.push((label.clone(), path.display().to_string()));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| haystack[i + 1..].starts_with(rest))
}

#[test]
fn the_search_finds_a_planted_value_in_any_form() {
    let dir = tempfile::tempdir().unwrap();
    let national_id = b"44051401359";
    let mut planted = vec![7u8; 5000];
    let needles = forms("national id", national_id);
    // Each form, planted alone in a file of noise, is found; and nothing in the noise.
    for (i, (_, needle)) in needles.iter().enumerate() {
        let mut bytes = planted.clone();
        bytes.splice(1000 + i..1000 + i, needle.iter().copied());
        std::fs::write(dir.path().join(format!("store-{i}.blk")), bytes).unwrap();
    }
    let found = search(dir.path(), &needles);
    for (i, (label, _)) in needles.iter().enumerate() {
        let file = dir.path().join(format!("store-{i}.blk"));
        assert!(
            found.contains(&(label.clone(), file.display().to_string())),
            "{label} planted in {} was not found: {found:?}",
            file.display()
        );
    }
    // Noise alone matches nothing.
    planted[0] = b'4';
    let noise = tempfile::tempdir().unwrap();
    std::fs::write(noise.path().join("noise"), planted).unwrap();
    assert_eq!(search(noise.path(), &needles), Vec::new());
}

#[ntex::test]
async fn personal_data_is_neither_in_the_log_nor_in_surrealdb_in_clear_or_unkeyed_hashes() {
    let store = tempfile::tempdir().unwrap();
    let mut p = Pipeline::start_with(Options {
        accounts: true,
        store_dir: Some(store.path().join("surreal")),
        registry: Some(registry_sim::Knobs::default()),
        receivers: Some(receivers::Knobs::default()),
        ..Options::default()
    })
    .await;
    p.set_capacity("at-rest", 10).await;

    let mut needles = Vec::new();
    let mut registrations = Vec::new();
    let mut last_body = serde_json::Value::Null;
    for n in 0..3u32 {
        let mut body = citizen(9100 + n, "at-rest");
        body["full_name"] = format!("Zofia Tajemnicza-Nowakowska {n}").into();
        body["email"] = format!("zofia.tajemnicza{n}@poczta.example").into();
        if n == 0 {
            body["phone"] = "+48600987654".into();
        }
        let key = format!("idem-key-{n}-a4f9");
        for field in ["national_id", "full_name", "email", "phone"] {
            if let Some(value) = body[field].as_str() {
                needles.extend(forms(&format!("{field} of citizen {n}"), value.as_bytes()));
            }
        }
        // What the edge hashed before its hashes were keyed: the canonical request, and the
        // idempotency key; and the request body as sent.
        let bytes = serde_json::to_vec(&body).unwrap();
        let canonical = ingest::validate::parse_registration(
            &bytes,
            Default::default(),
            &Default::default(),
            chrono::Utc::now().date_naive(),
        )
        .expect("a valid registration");
        let canonical = serde_json::to_vec(&canonical).unwrap();
        needles.extend(forms(&format!("canonical request {n}"), &canonical));
        needles.extend(forms(&format!("request body {n}"), &bytes));
        needles.extend(forms(&format!("idempotency key {n}"), key.as_bytes()));

        last_body = body.clone();
        let (status, answer) = p.submit(&body, Some(&key)).await;
        assert_eq!(status, 202, "{answer}");
        registrations.push((
            answer["registration_id"].as_str().unwrap().to_owned(),
            answer["token"].as_str().unwrap().to_owned(),
        ));
    }

    needles.extend(forms("idempotency key again", b"idem-key-again"));

    // Every service did its work under its own identity: verified, confirmed, notified,
    // projected.
    for (id, token) in &registrations {
        p.wait_status(id, token, "confirmed").await;
    }
    // A cancellation releases the slot and the citizen's claim (the claims releaser, as
    // the reservation identity): the citizen may then register again.
    let (id, token) = registrations.pop().unwrap();
    let (status, _) = p.cancel(&id, &token).await;
    assert_eq!(status, 202);
    p.wait_status(&id, &token, "cancelled").await;
    let again = testkit::eventually(
        "the cancelled citizen's claim to be released",
        Duration::from_secs(30),
        || async {
            let (status, body) = p.submit(&last_body, Some("idem-key-again")).await;
            (status == 202).then_some(body)
        },
    )
    .await;
    registrations.push((id, token));
    let again = (
        again["registration_id"].as_str().unwrap().to_owned(),
        again["token"].as_str().unwrap().to_owned(),
    );
    p.wait_status(&again.0, &again.1, "confirmed").await;
    registrations.push(again);
    let (receivers, _) = p.receivers.as_ref().unwrap();
    testkit::eventually(
        "reserved and confirmed messages to each citizen",
        Duration::from_secs(60),
        || async {
            let c = receivers.counts();
            (c.smtp.accepted >= 6 && c.webhook.accepted >= 2).then_some(())
        },
    )
    .await;
    let admin = async_nats::jetstream::new(p.admin_client().await);
    for (stream, last) in projections::worker::ends(&admin).await.unwrap() {
        let metric = format!("projection_checkpoint{{stream=\"{stream}\"}}");
        testkit::eventually(
            &format!("{stream} projected to its end"),
            Duration::from_secs(30),
            || async { (p.metric(&p.read, &metric).await >= last).then_some(()) },
        )
        .await;
    }
    p.stop_services().await;
    p.nats.kill();
    // Least privilege took nothing the services need: the server refused no request.
    assert_nothing_refused(&p);

    // The controls: both stores hold the pipeline's records where the search looks (the
    // registration ids are stored in clear on purpose).
    let ids: Vec<Needle> = registrations
        .iter()
        .map(|(id, _)| (format!("registration id {id}"), id.as_bytes().to_vec()))
        .collect();
    let surreal = store.path().join("surreal");
    for dir in [p.nats.store_dir(), surreal.clone()] {
        let found = search(&dir, &ids);
        for (label, _) in &ids {
            assert!(
                found.iter().any(|(l, _)| l == label),
                "{label} is not in {}: the search would miss a leak there",
                dir.display()
            );
        }
    }
    for dir in [p.nats.store_dir(), surreal] {
        let leaks = search(&dir, &needles);
        assert!(
            leaks.is_empty(),
            "personal data at rest in {}: {leaks:#?}",
            dir.display()
        );
    }
}

/// Erasure on a citizen's request (contract 1.2), through every service under its own
/// identity. A confirmed citizen's data is erased: their registration ends as a cancellation
/// would (the place goes to the one waiting, every count adds up), their own key is destroyed
/// and its bytes are on no file of the JetStream store (a secure erase overwrote them), a
/// replay that opens personal data finds theirs erased and the others' intact, and a rebuild
/// of the projections equals the live ones. Bad requests erase nothing and append
/// nothing.
#[ntex::test]
async fn an_erased_citizens_data_opens_nowhere_and_every_count_still_adds_up() {
    let mut p = Pipeline::start_with(Options {
        accounts: true,
        registry: Some(registry_sim::Knobs::default()),
        receivers: Some(receivers::Knobs::default()),
        ..Options::default()
    })
    .await;
    p.set_capacity("erasure", 2).await;
    // Two citizens confirmed, a third waiting in line.
    let bodies: Vec<serde_json::Value> = (0..3).map(|n| citizen(9300 + n, "erasure")).collect();
    let mut registrations = Vec::new();
    for body in &bodies {
        let (status, answer) = p.submit(body, None).await;
        assert_eq!(status, 202, "{answer}");
        registrations.push((
            answer["registration_id"].as_str().unwrap().to_owned(),
            answer["token"].as_str().unwrap().to_owned(),
        ));
    }
    let [erased, kept, waiting] = &registrations[..] else {
        unreachable!()
    };
    p.wait_status(&erased.0, &erased.1, "confirmed").await;
    p.wait_status(&kept.0, &kept.1, "confirmed").await;
    p.wait_status(&waiting.0, &waiting.1, "waitlisted").await;
    let js = async_nats::jetstream::new(p.admin_client().await);
    let erased_id = streams::model::RegistrationId::parse(&erased.0).unwrap();
    let key = streams::seals::fetch(&js, &erased_id)
        .await
        .unwrap()
        .expect("a registration is stored with its own key");

    // Bad requests: refused, and nothing is appended.
    let before = p.intake_messages().await;
    let erasure = |body: &serde_json::Value| {
        json!({
            "national_id": body["national_id"], "birth_date": body["birth_date"],
            "operator": "a.nowak", "note": "the citizen's letter of 2027-03-02, ref. 4411",
        })
    };
    let request = erasure(&bodies[0]);
    let mut typo = request.clone();
    typo["birth_date"] = "1960-01-02".into();
    let mut stranger = request.clone();
    stranger["national_id"] = citizen(9399, "erasure")["national_id"].clone();
    stranger["birth_date"] = citizen(9399, "erasure")["birth_date"].clone();
    let mut unsigned = request.clone();
    unsigned.as_object_mut().unwrap().remove("operator");
    for (body, status, field) in [
        (&typo, 400, Some("national_id")),
        (&unsigned, 400, Some("operator")),
        (&stranger, 404, None),
    ] {
        let (got, answer) = p.admin_post("/v1/admin/erasures", body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["field"].as_str(), field, "{answer}");
    }
    let (got, _, _) = p
        .send(
            p.http
                .post(format!("{}/v1/admin/erasures", p.ingest))
                .content_type("application/json"),
            Some(serde_json::to_vec(&request).unwrap()),
        )
        .await;
    assert_eq!(got, 401, "no operator token");
    assert_eq!(
        p.intake_messages().await,
        before,
        "a refused erasure appended"
    );

    // The erasure.
    let (status, answer) = p.admin_post("/v1/admin/erasures", &request).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["registrations"], json!([erased.0]));
    // The registration ends and its place goes to the one waiting: capacity 2, two active.
    p.wait_status(&erased.0, &erased.1, "cancelled").await;
    p.wait_status(&waiting.0, &waiting.1, "confirmed").await;
    p.wait_status(&kept.0, &kept.1, "confirmed").await;
    p.wait_availability("erasure", 0, 0).await;
    testkit::eventually(
        "the erased registration's key to be destroyed",
        Duration::from_secs(30),
        || async { matches!(streams::seals::fetch(&js, &erased_id).await, Ok(None)).then_some(()) },
    )
    .await;
    // Asked again: the same answer, and still nothing to open.
    let (status, again) = p.admin_post("/v1/admin/erasures", &request).await;
    assert_eq!((status, &again), (202, &answer));

    // A replay that opens personal data: the erased registration's reads as erased, the
    // others' as submitted.
    let mut out = Vec::new();
    let summary = replay::replay(
        &js,
        &replay::Replay {
            stream: replay::Stream::Intake,
            from: None,
            to: None,
            region: None,
            types: vec!["RegistrationSubmitted".into()],
            format: replay::Format::Ndjson,
            personal: replay::Personal::Decrypt(streams::crypto::Keys::from_secret(
                streams::crypto::DEVELOPMENT_SECRET,
            )),
        },
        &mut out,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.by_type["RegistrationSubmitted"], 3);
    let exported = String::from_utf8(out).unwrap();
    for (line, body) in exported.lines().zip(&bodies) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let personal = &record["data"]["personal"];
        if record["data"]["registration_id"] == erased.0.as_str() {
            assert_eq!(personal, &json!({"erased": true}), "{line}");
        } else {
            assert_eq!(personal["full_name"], body["full_name"], "{line}");
        }
    }
    assert!(!exported.contains(bodies[0]["full_name"].as_str().unwrap()));
    assert!(!exported.contains(bodies[0]["national_id"].as_str().unwrap()));

    // Every count adds up: one erasure recorded, one cancellation, the decisions of a
    // rebuild equal the live projections' (the rebuild test's comparison).
    let decisions = read_decisions(&js).await;
    let erasures = decisions
        .iter()
        .filter(|e| matches!(e, streams::events::Event::PersonalDataErased(d) if d.registration_id == erased_id))
        .count();
    assert!(erasures >= 1, "the erasure is recorded");
    let cancelled = decisions
        .iter()
        .filter(|e| matches!(e, streams::events::Event::RegistrationCancelled(_)))
        .count();
    assert_eq!(cancelled, 1);
    // A rebuild of the projections from the start of the log equals the live ones.
    let admin = |request: ntex::client::ClientRequest| {
        let request = request.bearer_auth(ADMIN);
        async { p.send(request, None).await }
    };
    let (status, _, started) = admin(p.http.post(format!("{}/v1/admin/rebuilds", p.read))).await;
    assert_eq!(status, 202, "{started}");
    let rebuild = started["rebuild_id"].as_str().unwrap().to_owned();
    let report = testkit::eventually("the rebuild to end", Duration::from_secs(120), || async {
        let (_, _, body) = admin(
            p.http
                .get(format!("{}/v1/admin/rebuilds/{rebuild}", p.read)),
        )
        .await;
        (body["state"] != "running").then_some(body)
    })
    .await;
    assert_eq!(report["comparison"]["equal"], true, "{report:#}");

    // Its key's bytes are on no file of the store: overwritten, not only unlinked.
    p.stop_services().await;
    p.nats.kill();
    // Every service did its part with its own identity, refused nothing.
    assert_nothing_refused(&p);
    let leaks = search(
        &p.nats.store_dir(),
        &[("the erased registration's wrapped key".into(), key.clone())],
    );
    assert!(
        leaks.is_empty(),
        "the erased key is still on disk: {leaks:?}"
    );
    // The control: the others' keys are where the search looks.
    let kept_key = {
        p.nats.restart();
        let js = async_nats::jetstream::new(p.admin_client().await);
        streams::seals::fetch(
            &js,
            &streams::model::RegistrationId::parse(&kept.0).unwrap(),
        )
        .await
        .unwrap()
        .expect("a kept registration's key")
    };
    p.nats.kill();
    assert!(
        !search(&p.nats.store_dir(), &[("kept".into(), kept_key)]).is_empty(),
        "the search would miss a key on disk"
    );
}

/// The stopped server refused no service's request (least privilege took nothing they need).
fn assert_nothing_refused(p: &Pipeline) {
    let log = p.nats.log();
    assert!(
        !log.contains(streams::accounts::VIOLATION_LOG),
        "nats-server refused a service's request:\n{log}"
    );
}

/// Every decision in the log, in order.
async fn read_decisions(js: &async_nats::jetstream::Context) -> Vec<streams::events::Event> {
    let mut all = Vec::new();
    streams::replay::read_to_end(
        js,
        streams::subjects::DECISIONS_STREAM,
        streams::subjects::decisions_filter(&streams::subjects::RegionFilter::All),
        1,
        |record| {
            if let Ok(envelope) = record.envelope {
                all.push(envelope.event);
            }
        },
    )
    .await
    .unwrap();
    all
}
