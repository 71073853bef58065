//! `sallyport-bench`: the load generator, upstream servers, audit and decision benchmarks, and the
//! report writer behind `bench/run`. Each workload prints one JSON object per run on stdout, with
//! the `--label`s merged in, for `bench/run` to collect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sallyport_bench::client::{Endpoint, Kx};
use sallyport_bench::load::Window;
use sallyport_bench::measure::Proc;
use serde_json::Value;

/// Sallyport's benchmark harness (see bench/run).
#[derive(Debug, Parser)]
#[command(name = "sallyport-bench")]
struct Cli {
    /// `KEY=VALUE` added to every JSON result (repeatable), e.g. `system=haproxy`.
    #[arg(long = "label", global = true, value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, global = true, default_value_t = 100)]
    clk_tck: u64,
    #[command(subcommand)]
    command: Command,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

#[derive(Debug, Args)]
struct Target {
    /// Where to connect.
    #[arg(long)]
    addr: SocketAddr,
    /// Identity folder (cert.pem, key.pem, ca.pem): connect with TLS and this client certificate.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Sallyport: send `CONNECT AUTHORITY` (e.g. http.bench:17003) after the handshake...
    #[arg(long, requires = "grant")]
    authority: Option<String>,
    /// ...with the grant in this file (`sallyport grant` output).
    #[arg(long, requires = "authority")]
    grant: Option<PathBuf>,
    /// The one key-exchange group offered.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    /// Check the server's certificate (off: the load generator spends its core on load).
    #[arg(long)]
    verify_server: bool,
    /// Pid of the proxy under test, for its CPU time (and memory).
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Args)]
struct Timing {
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

impl Timing {
    fn window(&self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the plain upstream servers until killed.
    Upstream {
        /// Echo server address.
        #[arg(long)]
        echo: SocketAddr,
        /// Sink (read and discard) address.
        #[arg(long)]
        sink: SocketAddr,
        /// HTTP origin address.
        #[arg(long)]
        http: SocketAddr,
    },
    /// New sessions per second: connect, one HTTP exchange with the origin, close.
    Sessions {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        timing: Timing,
        /// Clients opening sessions back to back.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Bulk upload through open tunnels into the sink.
    Bulk {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        timing: Timing,
        /// Parallel streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Round-trip latency of 64-byte echoes: closed loop, or at a fixed total rate.
    Latency {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        timing: Timing,
        /// Connections (one thread each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Probes per second in total; closed loop (the maximum) without it.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Memory per idle tunnel: the proxy's RSS at each number of open tunnels to the echo server.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Numbers of open tunnels at which RSS is read.
        #[arg(long, value_delimiter = ',', default_value = "1000,3000,6000,9000")]
        levels: Vec<usize>,
        /// Tunnels opened at once.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// Seconds to wait before each reading.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// Durable audit records per second with concurrent writers (group commit).
    Audit {
        /// A scratch folder on the disk to measure (emptied first).
        #[arg(long)]
        dir: PathBuf,
        /// Writer counts to run, one result each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        writers: Vec<usize>,
        /// Customer chains the writers spread over.
        #[arg(long, default_value_t = 1)]
        chains: usize,
        #[command(flatten)]
        timing: Timing,
    },
    /// Per-call p50/p99 of grant verification and policy decisions.
    Decisions {
        /// Customers loaded.
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        /// Policies per customer, one result each.
        #[arg(long, value_delimiter = ',', default_value = "1,20,100")]
        policies: Vec<usize>,
        /// Calls timed per measurement.
        #[arg(long, default_value_t = 20000)]
        iterations: usize,
    },
    /// Print a customer policy file with N policies (the decision benchmark's generator).
    Policy {
        /// Customer id.
        #[arg(long)]
        customer: String,
        /// Number of policies.
        #[arg(long, default_value_t = 20)]
        policies: usize,
    },
    /// Print criterion's estimates under DIR (target/criterion) as JSON results.
    Criterion {
        /// Criterion's output folder.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write the report: tables on stdout, the whole document to --out.
    Report {
        /// Raw results, one JSON object per line.
        #[arg(long)]
        raw: PathBuf,
        /// The run's context: a folder with one file per item (date, machine, versions, commands...).
        #[arg(long)]
        meta: PathBuf,
        /// Where to write the Markdown document.
        #[arg(long)]
        out: PathBuf,
    },
}

fn endpoint(t: &Target) -> anyhow::Result<Endpoint> {
    let tls = match &t.identity {
        Some(dir) => Some(std::sync::Arc::new(sallyport_bench::client::tls_config(
            dir,
            t.kx,
            t.verify_server,
        )?)),
        None => None,
    };
    let connect = match (&t.authority, &t.grant) {
        (Some(a), Some(g)) => {
            if tls.is_none() {
                bail!("--authority needs --identity: Sallyport takes CONNECT over mTLS only");
            }
            let grant = std::fs::read_to_string(g)
                .with_context(|| format!("reading the grant {}", g.display()))?;
            Some(sallyport_bench::client::connect_head(a, grant.trim()))
        }
        _ => None,
    };
    Endpoint::new(t.addr, tls, connect)
}

fn emit(labels: &[(String, String)], workload: &str, mut v: Value) {
    v["workload"] = Value::from(workload);
    for (k, val) in labels {
        // Numbers stay numbers, so rounds and loads compare as such in the report.
        v[k] = val
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(val.as_str()));
    }
    println!("{v}");
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sallyport-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let proc_of = |t: &Target| t.pid.map(|p| Proc::new(p, cli.clk_tck));
    let labels = &cli.labels;
    match &cli.command {
        Command::Upstream { echo, sink, http } => rt.block_on(async {
            use sallyport_bench::upstream::{Kind, serve};
            serve(Kind::Echo, *echo).await?;
            serve(Kind::Sink, *sink).await?;
            serve(Kind::Http, *http).await?;
            println!("upstream: ready");
            std::future::pending::<anyhow::Result<()>>().await
        }),
        Command::Sessions {
            target,
            timing,
            concurrency,
        } => {
            let ep = endpoint(target)?;
            let v = rt.block_on(sallyport_bench::load::sessions(
                ep,
                *concurrency,
                timing.window(),
                proc_of(target),
            ))?;
            emit(labels, "sessions", v);
            Ok(())
        }
        Command::Bulk {
            target,
            timing,
            streams,
        } => {
            let ep = endpoint(target)?;
            let v = rt.block_on(sallyport_bench::load::bulk(
                ep,
                *streams,
                timing.window(),
                proc_of(target),
            ))?;
            emit(labels, "bulk", v);
            Ok(())
        }
        Command::Latency {
            target,
            timing,
            connections,
            rate,
        } => {
            let ep = endpoint(target)?;
            let v = sallyport_bench::latency::run(
                &ep,
                *connections,
                *rate,
                timing.window(),
                proc_of(target),
            )?;
            emit(
                labels,
                if rate.is_some() {
                    "latency"
                } else {
                    "latency-max"
                },
                v,
            );
            Ok(())
        }
        Command::Idle {
            target,
            levels,
            parallel,
            settle,
        } => {
            let ep = endpoint(target)?;
            let proxy = proc_of(target).context("idle needs --pid of the proxy")?;
            let v = rt.block_on(sallyport_bench::load::idle(
                ep,
                levels,
                *parallel,
                Duration::from_secs_f64(*settle),
                proxy,
            ))?;
            emit(labels, "idle", v);
            Ok(())
        }
        Command::Audit {
            dir,
            writers,
            chains,
            timing,
        } => {
            for w in writers {
                let v = rt.block_on(sallyport_bench::audit::run(
                    &dir.join(format!("w{w}")),
                    *w,
                    *chains,
                    timing.window(),
                ))?;
                emit(labels, "audit", v);
            }
            Ok(())
        }
        Command::Decisions {
            customers,
            policies,
            iterations,
        } => {
            for p in policies {
                let v = sallyport_bench::decisions::percentiles(*customers, *p, *iterations)?;
                emit(labels, "decisions", v);
            }
            Ok(())
        }
        Command::Policy { customer, policies } => {
            print!(
                "{}",
                sallyport_bench::decisions::policy_text(customer, *policies)
            );
            Ok(())
        }
        Command::Criterion { dir } => {
            for v in sallyport_bench::report::criterion_results(dir)? {
                emit(labels, "criterion", v);
            }
            Ok(())
        }
        Command::Report { raw, meta, out } => {
            let raw_text = std::fs::read_to_string(raw)
                .with_context(|| format!("reading {}", raw.display()))?;
            let parsed = sallyport_bench::report::Raw::parse(&raw_text)?;
            let mut items = serde_json::Map::new();
            for entry in
                std::fs::read_dir(meta).with_context(|| format!("reading {}", meta.display()))?
            {
                let path = entry?.path();
                if let Some(key) = path.file_name().and_then(|n| n.to_str()) {
                    items.insert(key.to_owned(), Value::from(std::fs::read_to_string(&path)?));
                }
            }
            let meta = Value::Object(items);
            print!("{}", sallyport_bench::report::tables(&parsed));
            std::fs::write(
                out,
                sallyport_bench::report::document(&parsed, &raw_text, &meta),
            )
            .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
    }
}
