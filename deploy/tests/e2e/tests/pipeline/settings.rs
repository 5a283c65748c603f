//! The services' settings as operators meet them: every `REG_*` variable a service reads is
//! listed by `deploy/up --help` and in `README.md`, a secret's value never shows in `--help`,
//! and a wrong value stops a service at start with a message naming the variable.
//!
//! "A variable a service reads" is, for the ingest edge, the processors and the projections:
//! every variable of its command line (`cli::Args`, with the shared groups of
//! `streams::settings` flattened in), and every `"REG_…"` string literal in the sources of
//! those three crates and of `streams`, so that a read beside clap cannot hide from this test.
//! Not covered: what only the scripts under `deploy/` read (`REG_NATS_PORT`,
//! `REG_CLUSTER_PORT`, …), the simulators (`REG_REGISTRY_LISTEN`, `REG_REGISTRY_KNOBS`,
//! `REG_SMTP_LISTEN`, …), the test harnesses and benchmarks (`REG_TEST_*`,
//! `REG_HARNESS_WRAP`, `REG_LOAD_*`, …) and the analysts' tools; nor the stream names
//! `REG_INTAKE` and `REG_DECISIONS`, which are no variables.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../..")
        .canonicalize()
        .expect("the repository root")
}

/// The three services' command lines.
fn commands() -> [clap::Command; 3] {
    [
        ingest::cli::Args::command(),
        processors::cli::Args::command(),
        projections::cli::Args::command(),
    ]
}

/// The variables of `command`'s arguments.
fn variables_of(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned))
        .chain(command.get_subcommands().flat_map(variables_of))
        .collect()
}

/// Every `REG_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("REG_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The `"REG_…"` string literals in the Rust sources under `dir`, and the names built at run
/// time (`"REG_NATS_{who}_USER"`), each with its file.
fn literals_under(dir: &Path, found: &mut BTreeSet<String>, built: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            literals_under(&path, found, built);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("a source file");
        for (at, _) in source.match_indices("\"REG_") {
            let name: String = source[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            match source[at + 1 + name.len()..].chars().next() {
                Some('"') => {
                    found.insert(name);
                }
                Some('{') => built.push(format!("{} ({})", name, path.display())),
                // Part of a sentence ("REG_X is set without …"): a name in a message.
                _ => {}
            }
        }
    }
}

/// Every variable the services read (see the module's documentation).
fn variables_the_services_read() -> BTreeSet<String> {
    let mut variables: BTreeSet<String> = commands().iter().flat_map(variables_of).collect();
    let mut literals = BTreeSet::new();
    let mut built = Vec::new();
    for crate_dir in ["ingest", "processors", "projections", "streams"] {
        literals_under(
            &root().join(crate_dir).join("src"),
            &mut literals,
            &mut built,
        );
    }
    assert!(
        built.is_empty(),
        "variable names built at run time hide from this test; spell each out: {built:?}"
    );
    assert!(
        literals.contains("REG_NATS_URL") && literals.contains("REG_WEBHOOK_SECRET"),
        "the source scan finds the services' variables: {literals:?}"
    );
    for stream in [
        streams::subjects::INTAKE_STREAM,
        streams::subjects::DECISIONS_STREAM,
    ] {
        literals.remove(stream);
    }
    variables.extend(literals);
    variables
}

#[test]
fn every_variable_a_service_reads_is_listed_by_deploy_up_and_the_readme() {
    let variables = variables_the_services_read();
    for expected in ["REG_SECRET", "REG_SURREAL_ENDPOINT", "REG_REGISTRY_URL"] {
        assert!(variables.contains(expected), "{expected} in {variables:?}");
    }
    let help = Command::new(root().join("deploy/up"))
        .arg("--help")
        .output()
        .expect("deploy/up runs");
    assert!(help.status.success(), "deploy/up --help: {help:?}");
    let help = names_in(&String::from_utf8(help.stdout).expect("UTF-8 help"));
    let readme = names_in(&std::fs::read_to_string(root().join("README.md")).expect("README"));
    let not_in_help: Vec<&String> = variables.difference(&help).collect();
    let not_in_readme: Vec<&String> = variables.difference(&readme).collect();
    assert!(
        not_in_help.is_empty() && not_in_readme.is_empty(),
        "every REG_* variable a service reads is listed, each by its full name.\n\
         {} missing from deploy/up --help: {not_in_help:?}\n\
         {} missing from README.md: {not_in_readme:?}",
        not_in_help.len(),
        not_in_readme.len(),
    );
}

#[test]
fn a_secret_never_shows_in_help() {
    for command in commands() {
        for arg in command.get_arguments() {
            let Some(variable) = arg.get_env().and_then(|v| v.to_str()) else {
                continue;
            };
            if ["SECRET", "PASS", "TOKEN"]
                .iter()
                .any(|word| variable.contains(word))
            {
                assert!(
                    arg.is_hide_env_values_set(),
                    "{}: {variable}'s value shows in --help",
                    command.get_name()
                );
                assert!(
                    arg.get_default_values().is_empty() || arg.is_hide_default_value_set(),
                    "{}: {variable}'s default shows in --help",
                    command.get_name()
                );
            }
        }
    }
}

/// Starts `service` as its binary does (`chaos serve <service>`), with nothing in its
/// environment but `env`, and returns how it ended and what it wrote on standard error. Each
/// case here ends before any connection is tried.
fn start(service: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["serve", service])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the chaos binary starts");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_value_stops_a_service_at_start_naming_its_variable() {
    for (service, variable, value) in [
        ("ingest", "REG_RATE_PER_CITIZEN", "lots"),
        ("ingest", "REG_TRUSTED_PROXIES", "10.0.0.1,proxy"),
        ("processors", "REG_REGISTRY_TIMEOUT_MS", "soon"),
        ("processors", "REG_NATS_MANAGE_STREAMS", "perhaps"),
        ("projections", "REG_CACHE_TTL_MS", "-1"),
        ("projections", "REG_LOG_FORMAT", "xml"),
    ] {
        let (code, stderr) = start(service, &[("REG_DEV_MODE", "1"), (variable, value)]);
        assert_eq!(code, Some(2), "{service} with {variable}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{variable}={value:?} is invalid")),
            "{service} with {variable}={value}: {stderr}"
        );
    }
}

#[test]
fn outside_development_mode_a_service_refuses_the_development_secrets() {
    for (service, named) in [
        ("ingest", "REG_SECRET and REG_ADMIN_TOKEN"),
        ("processors", "REG_SECRET and REG_WEBHOOK_SECRET"),
        ("projections", "REG_SECRET and REG_ADMIN_TOKEN"),
    ] {
        let (code, stderr) = start(service, &[]);
        assert_eq!(code, Some(1), "{service}: {stderr}");
        assert!(stderr.contains(named), "{service}: {stderr}");
        let (code, stderr) = start(service, &[("REG_DEV_MODE", "no")]);
        assert_eq!(code, Some(1), "{service}: {stderr}");
    }
}
