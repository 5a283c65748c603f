//! The chaos and failover runs at CI size. The chaos run: the same binary and checks as
//! `deploy/chaos`, with fewer citizens and a shorter load, but still replicas SIGKILLed and
//! nats-server restarted while it flows. The failover run: the same load and checks on a
//! three-node cluster whose intake leader dies (`deploy/failover`). Each run exits non-zero
//! on any violation of the invariants.

use std::process::Command;

#[test]
fn the_invariants_hold_while_replicas_and_nats_server_are_killed() {
    let stdout = run_chaos(&[
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
    ]);
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
        assert_eq!(count(&stdout, must_be_zero), 0, "{must_be_zero}:\n{stdout}");
    }
    for must_be_positive in [
        "registrations decided in the one-region replicas' region",
        "registrations decided in the other region",
    ] {
        assert!(
            count(&stdout, must_be_positive) > 0,
            "{must_be_positive}:\n{stdout}"
        );
    }
}

/// The failover run at CI size (about 35 s here, most of it the load's 30 s): the system on a
/// three-node cluster with R3 streams, the node leading the intake stream SIGKILLed and
/// restarted in each of two rounds while citizens submit. Nothing acknowledged is lost or
/// decided twice, no slot is overbooked, and every 503 the edge answered is timed against the
/// windows without an intake leader: none may fall outside one.
#[test]
fn nothing_accepted_is_lost_when_the_intake_leader_node_dies() {
    let stdout = run_chaos(&[
        "failover",
        "--submissions",
        "1500",
        "--slots",
        "100",
        "--duration",
        "30s",
        "--rounds",
        "2",
        "--seed",
        "7",
    ]);
    let count = |name: &str| count(&stdout, name);
    assert_eq!(
        count("intake leader SIGKILLs (each restarted)"),
        2,
        "{stdout}"
    );
    assert!(count("202 answers to submissions") > 0, "{stdout}");
    for must_be_zero in [
        "accepted (202) but not in the intake log",
        "registrations without a decision",
        "registrations with more than one decision",
        "times a slot went over capacity",
        "times a citizen held two slots",
        "decisions differing from the in-order model",
    ] {
        assert_eq!(count(must_be_zero), 0, "{must_be_zero}:\n{stdout}");
    }
    // Every 503 is timed against the windows without a leader: the edge refuses only while
    // no quorum exists.
    assert_eq!(
        count("503 answers while the intake had a leader"),
        0,
        "{stdout}"
    );
    assert!(
        count("windows without an intake leader or changing it") >= 2,
        "{stdout}"
    );
}

/// Runs the chaos binary with `args`; its standard output, once it exited cleanly (any
/// violation of the invariants makes it exit non-zero).
fn run_chaos(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("the chaos binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {} run found violations or failed:\n{stdout}\n{stderr}",
        args[0]
    );
    stdout
}

/// The count a verdict prints on the line starting with `name`.
fn count(stdout: &str, name: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("the verdict reports {name}:\n{stdout}"));
    line.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count in {line}"))
}
