//! Golden files of every event: the wire format is a contract with stored logs, so any change
//! to it must be deliberate. Regenerate with `UPDATE_GOLDEN=1 cargo test -p streams --test golden`
//! and review the diff (and bump the event's version if old payloads no longer decode).

use std::path::PathBuf;

use streams::events::{Envelope, samples};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_event_matches_its_golden_file_and_round_trips() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let samples = samples();
    assert_eq!(
        samples.len(),
        streams::events::EVENT_TYPES.len(),
        "one sample per event type"
    );
    for envelope in samples {
        let name = format!("{}.v{}.json", envelope.event.event_type(), envelope.version);
        let path = golden_dir().join(&name);
        let rendered = serde_json::to_string_pretty(&envelope).unwrap() + "\n";
        if update {
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{name} is missing: run with UPDATE_GOLDEN=1"));
        assert_eq!(rendered, golden, "{name} changed: the wire format drifted");
        // Stored bytes decode to the same event (old logs stay readable).
        assert_eq!(
            Envelope::decode(golden.as_bytes()).unwrap(),
            envelope,
            "{name}"
        );
    }
}

#[test]
fn the_list_of_event_types_names_every_sample_once() {
    let mut types: Vec<&str> = samples().iter().map(|e| e.event.event_type()).collect();
    let mut listed = streams::events::EVENT_TYPES.to_vec();
    types.sort_unstable();
    listed.sort_unstable();
    assert_eq!(types, listed);
}

/// The analysts' catalogue (docs/analysts.md) has a row for every event type.
#[test]
fn the_event_catalogue_lists_every_type() {
    let catalogue = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/analysts.md"),
    )
    .unwrap();
    for event_type in streams::events::EVENT_TYPES {
        assert!(
            catalogue.contains(&format!("| `{event_type}` |")),
            "docs/analysts.md has no row for {event_type}"
        );
    }
}

/// Failures recorded before they had codes (`last_error` held the outside system's own words,
/// as in `tests/golden/legacy/`) still decode, with no code, and are shown as unclassified,
/// their words withheld.
#[test]
fn failures_recorded_before_codes_still_decode_and_their_words_are_not_shown() {
    use streams::events::Event;
    use streams::outside::{UNCLASSIFIED, UNCLASSIFIED_REASON, shown};
    for name in [
        "VerificationInconclusive.v1.json",
        "ReviewRequired.v1.json",
        "NotificationFailed.v1.json",
    ] {
        let old = std::fs::read(golden_dir().join("legacy").join(name)).unwrap();
        let (code, words) = match Envelope::decode(&old).unwrap().event {
            Event::VerificationInconclusive(e) => (e.error_code, e.last_error),
            Event::ReviewRequired(e) => (e.error_code, e.last_error),
            Event::NotificationFailed(e) => (e.error_code, e.last_error),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(code, "", "{name}");
        assert!(
            words.contains("503"),
            "{name}: the old words are still in the log: {words}"
        );
        assert_eq!(
            shown(&code, &words),
            (UNCLASSIFIED.to_owned(), UNCLASSIFIED_REASON.to_owned()),
            "{name}"
        );
    }
}
