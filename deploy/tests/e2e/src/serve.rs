//! `<tool> serve <service>`: a tool binary (the chaos run, the contention benchmark) starts
//! the services as its own children, running the same code as the services' binaries.

use clap::Subcommand;

/// The service to run.
#[derive(Debug, Subcommand)]
pub enum Service {
    /// The ingest edge.
    Ingest(ingest::cli::Args),
    /// The reservation processor.
    Processors(processors::cli::Args),
    /// The projections and read API.
    Projections(projections::cli::Args),
    /// A bare ntex handler on the edge's route: reads the body, answers `202`. The ceiling
    /// the edge is measured against (same framework, same workers, no work).
    Bare {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
        /// HTTP worker threads (the edge's default).
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

/// Runs `service` until a signal, or until the parent tool dies: the parent holds our stdin
/// open, so end-of-file means it is gone, and a crashed run must not leave services behind.
pub async fn serve(service: Service) -> anyhow::Result<()> {
    streams::runtime::init_telemetry(match &service {
        Service::Ingest(args) => args.telemetry.log_format,
        Service::Processors(args) => args.telemetry.log_format,
        Service::Projections(args) => args.telemetry.log_format,
        Service::Bare { .. } => streams::settings::LogFormat::Text,
    });
    let shutdown = streams::runtime::shutdown_on_signals();
    let orphaned = shutdown.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        orphaned.cancel();
    });
    match service {
        Service::Ingest(args) => ingest::cli::run_cli(args, shutdown).await,
        Service::Processors(args) => processors::cli::run_cli(args, shutdown).await,
        Service::Projections(args) => projections::cli::run_cli(args, shutdown).await,
        Service::Bare { listen, workers } => {
            let listener = streams::runtime::bind(&listen)?;
            streams::http::serve(listener, workers, (), bare_routes, shutdown).await
        }
    }
}

/// What the bare handler answers on `/v1/availability`: one slot, the read API's shape.
const BARE_AVAILABILITY: &str = r#"[{"region":"mazowieckie","location":"hot-narodowy","date":"2027-03-01","capacity":1000000,"remaining":999000}]"#;

fn bare_routes(cfg: &mut ntex::web::ServiceConfig) {
    use ntex::web;
    cfg.route("/readyz", web::get().to(streams::http::healthz))
        .route(
            "/v1/availability",
            web::get().to(async || {
                web::HttpResponse::Ok()
                    .content_type("application/json")
                    .header("cache-control", "public, max-age=1")
                    .body(BARE_AVAILABILITY)
            }),
        )
        .route(
            "/v1/registrations",
            web::post().to(async |body: ntex::util::Bytes| {
                web::HttpResponse::Accepted()
                    .content_type("application/json")
                    .body(format!("{{\"received_bytes\":{}}}", body.len()))
            }),
        );
}

/// Runs a tool's work until it ends or Ctrl-C / SIGTERM arrives. On a signal the work is
/// dropped, which stops what it started (nats-server, redis-server and the services are
/// killed when their handles drop), instead of leaving them running.
pub async fn until_interrupted<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let interrupted = streams::runtime::shutdown_on_signals();
    tokio::select! {
        result = work => result,
        _ = interrupted.cancelled() => anyhow::bail!("interrupted; everything it started is stopped"),
    }
}
