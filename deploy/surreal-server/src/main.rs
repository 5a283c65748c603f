//! `surreal`: SurrealDB's server as its own `surreal` binary is, from the `surrealdb-server`
//! library (command line and `SURREAL_*` variables as documented upstream, e.g.
//! `surreal start --bind 127.0.0.1:8000 --user root --pass … surrealkv:///path`). It builds
//! its own Tokio runtime, so `main` is a plain function.
#![forbid(unsafe_code)]
// The release build computes the layout of SurrealDB's expression evaluator (an async fn
// nested deeper than rustc's default query depth of 128 allows); the debug build does not.
#![recursion_limit = "256"]

fn main() -> std::process::ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
