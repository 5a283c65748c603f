//! Personal data at rest, and the pipeline under per-service NATS identities: citizens'
//! national ids, names, e-mails and phone numbers go through every service (edge,
//! reservation, verification, notification, projections, each as its own NATS user), then
//! the JetStream store and the SurrealKV files are searched byte by byte for each value and
//! for each unkeyed hash of it, and hold none.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

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
    let log = p.nats.log();
    assert!(
        !log.contains(streams::accounts::VIOLATION_LOG),
        "nats-server refused a service's request:\n{log}"
    );

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
