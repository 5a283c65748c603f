//! The chaos run at CI size: the same binary and checks as `deploy/chaos`, with fewer
//! citizens and a shorter load, but still replicas SIGKILLed and nats-server restarted while
//! it flows. The run exits non-zero on any violation of the invariants.

use std::process::Command;

#[test]
fn the_invariants_hold_while_replicas_and_nats_server_are_killed() {
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "run",
            "--submissions",
            "1500",
            "--slots",
            "100",
            "--duration",
            "12s",
            "--kills",
            "6",
            "--nats-restarts",
            "2",
            // Two replicas for every region and one for the first region only, beside them:
            // the operator's README example, under a two-region load.
            "--replicas",
            "2",
            "--region-replicas",
            "1",
            "--seed",
            "7",
        ])
        .output()
        .expect("the chaos binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the chaos run found violations or failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("chaos verdict"), "{stdout}");
    for must_be_zero in [
        "registrations without a decision",
        "registrations with more than one decision",
        "times a slot went over capacity",
        "times a citizen held two slots",
        "decisions differing from the in-order model",
        "messages missing",
        "messages nothing called for",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(must_be_zero))
            .unwrap_or_else(|| panic!("the verdict reports {must_be_zero}:\n{stdout}"));
        assert!(line.trim_end().ends_with(" 0"), "{line}");
    }
    for must_be_positive in [
        "registrations decided in the one-region replicas' region",
        "registrations decided in the other region",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(must_be_positive))
            .unwrap_or_else(|| panic!("the verdict reports {must_be_positive}:\n{stdout}"));
        let count: u64 = line
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(count > 0, "{line}");
    }
}
