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
    assert_eq!(samples.len(), 23, "one sample per event type");
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
