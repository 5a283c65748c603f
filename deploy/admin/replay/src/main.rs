//! `replay`: an analyst's copy of the event log, in order, to NDJSON or CSV.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use replay::{Format, Personal, Point, Replay, Stream};
use streams::model::Region;
use streams::settings::{NatsArgs, Secret};

/// Reads one stream of the registration log, in the order JetStream accepted it, and writes
/// each event as a line of NDJSON or a CSV row. It uses an ephemeral ordered consumer: it
/// changes nothing on the server and never slows the processors.
///
/// Examples:
///
///   replay decisions --region mazowieckie --format csv -o mazowieckie.csv
///
///   replay intake --from 2027-03-01T08:00:00Z --to 2027-03-01T09:00:00Z --type RegistrationSubmitted
///
///   replay decisions --from 120000 --type RegistrationConfirmed --type SlotRejected
///
/// Personal data (names, national ids, contacts, and the keyed hashes that link one citizen's
/// registrations) is left out unless --decrypt-personal is given.
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Which stream: `intake` (what was asked) or `decisions` (what was decided).
    #[arg(value_enum)]
    stream: Stream,
    /// Start here: a stream sequence number, or an RFC 3339 time (the first event stored at or
    /// after it). Default: the beginning.
    #[arg(long)]
    from: Option<Point>,
    /// Stop here (inclusive): a sequence number or an RFC 3339 time. Default: the last event
    /// stored when the replay started.
    #[arg(long)]
    to: Option<Point>,
    /// Only this region (e.g. mazowieckie).
    #[arg(long, value_parser = parse_region)]
    region: Option<Region>,
    /// Only this event type (repeat for more), e.g. RegistrationConfirmed.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Open the sealed personal fields with the data key (REG_SECRET) and write them in
    /// clear. The output then holds personal data: keep it where the law allows.
    #[arg(long)]
    decrypt_personal: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// The server secret the data key derives from: --decrypt-personal needs the services'
    /// own.
    #[arg(long, env = "REG_SECRET", hide_env_values = true)]
    secret: Option<Secret>,
    /// How to reach NATS: deploy/replay passes the analyst identity deploy/up generated.
    #[command(flatten)]
    nats: NatsArgs,
}

fn parse_region(s: &str) -> Result<Region, String> {
    Region::parse(s).map_err(|e| e.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = streams::settings::parse();
    replay::check_types(&args.types).map_err(anyhow::Error::msg)?;
    let personal = if args.decrypt_personal {
        let secret = args.secret.as_ref().context(
            "--decrypt-personal needs the data key: set REG_SECRET to the services' secret",
        )?;
        eprintln!(
            "WARNING: personal data will be written in clear{}. Keep it where the law allows, and delete it when done.",
            args.output
                .as_ref()
                .map(|p| format!(" to {}", p.display()))
                .unwrap_or_default()
        );
        Personal::Decrypt(streams::crypto::Keys::from_secret(secret.expose()))
    } else {
        Personal::Omit
    };
    let mut options = args.nats.options("replay")?;
    // An analyst reads; the streams are the services' to create.
    options.manage_streams = false;
    let give_up = tokio_util::sync::CancellationToken::new();
    let timer = {
        let give_up = give_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            give_up.cancel();
        })
    };
    let client = streams::runtime::connect(&options, &give_up)
        .await
        .with_context(|| format!("Failed to connect to NATS at {} within 15 s", args.nats.url))?;
    timer.abort();
    let js = async_nats::jetstream::new(client);

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("Failed to create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        // Drawn on standard error only when it is a terminal.
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, ETA {eta}",
        )
        .expect("a valid template"),
    );
    let started = Instant::now();
    let replay = Replay {
        stream: args.stream,
        from: args.from,
        to: args.to,
        region: args.region,
        types: args.types,
        format: args.format,
        personal,
    };
    let summary = replay::replay(&js, &replay, &mut out, &mut |read, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(read);
    })
    .await?;
    drop(out);
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "Read {} events of {} (sequences {}–{}) in {:.1} s ({:.0}/s); wrote {}{}.",
        summary.read,
        replay.stream.name(),
        summary.first_seq.map_or("-".into(), |s| s.to_string()),
        summary.last_seq.map_or("-".into(), |s| s.to_string()),
        elapsed,
        summary.read as f64 / elapsed.max(1e-6),
        summary.written,
        args.output
            .as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default(),
    );
    for (event_type, count) in &summary.by_type {
        eprintln!("  {event_type:<32} {count:>10}");
    }
    if summary.undecodable > 0 {
        eprintln!(
            "  {:<32} {:>10}  (written with the reason; a newer writer's events?)",
            "undecodable", summary.undecodable
        );
    }
    Ok(())
}
