//! `surreal`: SurrealDB's server as its own `surreal` binary is, from the `surrealdb-server`
//! library (command line and `SURREAL_*` variables as documented upstream, e.g.
//! `surreal start --bind 127.0.0.1:8000 --user root --pass … surrealkv:///path`). It builds
//! its own Tokio runtime, so `main` is a plain function.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
