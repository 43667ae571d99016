//! `coalition-server`: run the relay, or administer its data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use coalition_core::model::{OrgKind, TreatyStatus};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_core::transport::{Congestion, Invite, QuicEndpoint, SpkiPin};
use coalition_server::admin::{self, NewCoalition};
use coalition_server::auth::{AuthDb, InviteSpec};
use coalition_server::limits::Limits;
use coalition_server::quic::QuicIdentity;
use coalition_server::{Relay, RelayConfig};
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "coalition-server", version, about = "Coalition Sync relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Administer the relay's data directory (coalitions, invites, devices).
    Admin(AdminArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "COALITION_LISTEN")]
    listen: SocketAddr,
    /// Data directory (the document store and auth.db).
    #[arg(long, env = "COALITION_DATA")]
    data: PathBuf,
    /// Load the demo coalition if the data directory holds none, and print one invite per
    /// demo role.
    #[arg(long)]
    demo: bool,
    /// Documents kept in memory; idle ones beyond this are unloaded.
    #[arg(long, default_value_t = 1000)]
    max_docs: usize,
    /// Largest sync message a peer may send, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Messages per second one connection may keep up (bursts of ten times more pass).
    #[arg(long, default_value_t = 200.0)]
    max_messages_per_second: f64,
    /// Documents one person may create.
    #[arg(long, default_value_t = 1000)]
    max_documents_per_person: i64,
    /// Bytes of changes the relay stores from one person.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    max_bytes_per_person: i64,
    /// UDP address of the QUIC sync endpoint [default: 127.0.0.1:8443; if that default is
    /// taken, the relay runs without QUIC and says so; an address given here must be free].
    #[arg(long, env = "COALITION_QUIC_LISTEN")]
    quic_listen: Option<SocketAddr>,
    /// Serve no QUIC endpoint (devices sync over WebSocket).
    #[arg(long, conflicts_with = "quic_listen")]
    no_quic: bool,
    /// PEM certificate chain for QUIC [default: one made at first start in the data
    /// directory]. Invites carry the pin of its public key.
    #[arg(long, requires = "quic_key")]
    quic_cert: Option<PathBuf>,
    /// PEM private key of --quic-cert.
    #[arg(long, requires = "quic_cert")]
    quic_key: Option<PathBuf>,
    /// Extra names for the certificate made at first start (the host name devices use).
    #[arg(long = "quic-name")]
    quic_names: Vec<String>,
    /// QUIC congestion controller: cubic (default, with a first window that holds a new
    /// device's first download), bbr or newreno.
    #[arg(long, default_value = "cubic")]
    congestion: Congestion,
}

/// The QUIC listen address when none is given.
const DEFAULT_QUIC_LISTEN: &str = "127.0.0.1:8443";

#[derive(Args)]
struct AdminArgs {
    /// Data directory of the relay.
    #[arg(long, env = "COALITION_DATA", global = true)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a coalition as its coordinator; prints its id.
    CreateCoalition {
        /// ISO 3166-1 alpha-2 code of the affected state (or XK).
        #[arg(long)]
        state: String,
        /// Display name of the coalition.
        #[arg(long)]
        name: String,
        /// The coordinating organisation's id, e.g. MCA-BA.
        #[arg(long)]
        org: String,
        /// The coordinating organisation's full name.
        #[arg(long)]
        org_name: String,
        /// What kind of organisation it is.
        #[arg(long, default_value = "affected_state")]
        org_kind: String,
        /// The coordinator (user name).
        #[arg(long)]
        user: String,
        /// The state's treaty status.
        #[arg(long, default_value = "state_party")]
        treaty_status: String,
    },
    /// Invite a person; prints the invite code (shown once).
    Invite {
        /// The coalition id.
        #[arg(long)]
        coalition: String,
        /// The person (user name).
        #[arg(long)]
        user: String,
        /// The organisation id; added to the coalition's members if it is not one.
        #[arg(long)]
        org: String,
        /// The organisation's full name, when it is added.
        #[arg(long)]
        org_name: Option<String>,
        /// The role: coordinator, nmac, donor, expertise, operator or observer.
        #[arg(long)]
        role: String,
        /// Hours until the invite expires.
        #[arg(long, default_value_t = 168)]
        expires_hours: i64,
        /// The relay's QUIC UDP port, written into the invite with the certificate pin
        /// [default: the port the relay last served QUIC on from this data directory; none if
        /// it never did, or had QUIC off].
        #[arg(long)]
        quic_port: Option<u16>,
        /// The relay's configured QUIC certificate (as given to `serve --quic-cert`); default:
        /// the one in the data directory.
        #[arg(long)]
        quic_cert: Option<PathBuf>,
        /// Print an invite without the QUIC pin (for a relay run with --no-quic).
        #[arg(long)]
        no_quic: bool,
    },
    /// List enrolled devices.
    Devices {
        /// Only devices of this coalition.
        #[arg(long)]
        coalition: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its credential stops working and its live connections close.
    Revoke {
        /// The device id.
        #[arg(long)]
        device: String,
    },
    /// Review changes the relay refused: list, show, accept or discard them.
    Quarantine {
        #[command(subcommand)]
        command: coalition_server::quarantine::AdminCommand,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Automerge opens an info-level span for every batch of changes it loads;
                // formatting them cost a busy relay a twentieth of its time.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,automerge=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs written to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve(args))
        }
        Command::Admin(args) => {
            let Some(data) = args.data else {
                bail!("--data DIR is required");
            };
            admin_command(&data, args.command)
        }
    }
}

/// The QUIC endpoint as `serve` set it up.
struct QuicServing {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    pin: SpkiPin,
}

/// Binds the QUIC endpoint, unless told not to. A taken default port is not fatal: the relay
/// serves WebSocket alone and invites carry no pin, so devices do not try a port that is not
/// ours. An address given explicitly must work.
fn start_quic(args: &ServeArgs) -> Result<Option<QuicServing>> {
    if args.no_quic {
        return Ok(None);
    }
    let explicit = args.quic_listen.is_some();
    let addr = match args.quic_listen {
        Some(a) => a,
        None => DEFAULT_QUIC_LISTEN.parse()?,
    };
    let identity = match (&args.quic_cert, &args.quic_key) {
        (Some(cert), Some(key)) => QuicIdentity::load(cert, key)?,
        _ => QuicIdentity::load_or_create(&args.data, Some(addr), &args.quic_names)?,
    };
    let config = identity.server_config(args.congestion)?;
    match coalition_server::quic::bind(addr, config) {
        Ok(endpoint) => {
            let addr = endpoint.local_addr()?;
            Ok(Some(QuicServing {
                endpoint,
                addr,
                pin: identity.pin(),
            }))
        }
        Err(e) if !explicit => {
            tracing::warn!(error = %anyhow::Error::from(e), "QUIC is off: its default address is taken; give --quic-listen to choose another");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Where `serve` notes the QUIC port it listens on, for `admin invite` (see there).
const QUIC_PORT_FILE: &str = "quic-port";

/// Notes the QUIC port `serve` listens on, or that it serves no QUIC, so that invites made
/// with `admin invite` point devices at QUIC only when the relay serves it.
fn record_quic_port(data: &Path, port: Option<u16>) -> Result<()> {
    let path = data.join(QUIC_PORT_FILE);
    match port {
        Some(port) => std::fs::write(&path, port.to_string())
            .with_context(|| format!("cannot write {}", path.display())),
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        },
    }
}

/// The QUIC port `serve` last noted in `data`.
fn recorded_quic_port(data: &Path) -> Result<Option<u16>> {
    let path = data.join(QUIC_PORT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().parse().with_context(|| {
            format!("{} does not hold a port number", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let quic = start_quic(&args)?;
    record_quic_port(&args.data, quic.as_ref().map(|q| q.addr.port()))?;
    if args.demo {
        let data = args.data.clone();
        let setup = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut store = Store::open(&data)?;
            let mut auth = AuthDb::open(&data)?;
            let now = chrono::Utc::now().timestamp();
            Ok(admin::setup_demo(
                &mut store,
                &mut auth,
                now + 168 * 3600,
                now,
            )?)
        })
        .await??;
        print_demo(&setup, &addr, &args.data, quic.as_ref());
    }
    let relay = Relay::start(RelayConfig {
        data: args.data.clone(),
        max_docs: args.max_docs,
        limits: Limits {
            max_message: args.max_message_bytes,
            messages_per_second: args.max_messages_per_second,
            message_burst: args.max_messages_per_second * 10.0,
            max_documents_per_person: args.max_documents_per_person,
            max_bytes_per_person: args.max_bytes_per_person,
            ..Limits::default()
        },
    })
    .await
    .with_context(|| format!("cannot open the data directory {}", args.data.display()))?;
    tracing::info!(%addr, data = %args.data.display(), "relay listening");
    let quic_task = quic.as_ref().map(|q| {
        tracing::info!(addr = %q.addr, pin = %q.pin, congestion = %args.congestion, "QUIC listening");
        tokio::spawn(coalition_server::quic::serve(
            q.endpoint.clone(),
            relay.state(),
        ))
    });
    relay.serve(listener, shutdown_signal()).await?;
    if let (Some(q), Some(task)) = (quic, quic_task) {
        // The hub has closed every connection; say goodbye to the rest and stop accepting.
        q.endpoint
            .close(quinn::VarInt::from_u32(0), b"relay stopping");
        if tokio::time::timeout(std::time::Duration::from_secs(2), q.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("QUIC connections did not close within 2 s");
        }
        task.abort();
    }
    tracing::info!("relay stopped");
    Ok(())
}

fn print_demo(
    setup: &admin::DemoSetup,
    addr: &SocketAddr,
    data: &Path,
    quic: Option<&QuicServing>,
) {
    let http = format!("http://{addr}");
    let origin = if setup.created {
        "created now".to_string()
    } else {
        format!("already in {}", data.display())
    };
    println!("Demo coalition {} ({origin})", setup.coalition);
    println!("  sync URL:   ws://{addr}/sync   (Authorization: Bearer <credential>, or ?token=)");
    match quic {
        Some(q) => println!(
            "  QUIC:       udp://{}   certificate pin (SHA-256 of its public key): {}",
            q.addr, q.pin
        ),
        None => println!("  QUIC:       off (devices sync over WebSocket)"),
    }
    println!("  enroll URL: {http}/api/v1/enroll   (POST {{\"invite\", \"device\", \"actor\"}})");
    println!(
        "  API:        {http}/api/v1/coalitions/{}/report",
        setup.coalition
    );
    println!();
    println!(
        "One invite per demo role (single use, valid 7 days; new ones are printed at every start):"
    );
    if quic.is_some() {
        println!("Each invite ends with the QUIC port and certificate pin; paste it whole.");
    }
    for (person, invite) in &setup.invites {
        let code = Invite {
            code: invite.code.clone(),
            quic: quic.map(|q| QuicEndpoint {
                port: q.addr.port(),
                pin: q.pin,
            }),
        };
        println!();
        println!("  {:<12} {:<9} {}", person.role, person.org, person.user);
        println!("    invite: {code}");
        println!(
            "    enroll: coalition --store ./devices/{} enroll --server {http} --invite {code}",
            person.org
        );
    }
    println!();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

fn parse_coalition(text: &str) -> Result<DocumentId> {
    DocumentId::parse_id_or_url(text).with_context(|| format!("`{text}` is not a coalition id"))
}

fn admin_command(data: &Path, command: AdminCommand) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    match command {
        AdminCommand::CreateCoalition {
            state,
            name,
            org,
            org_name,
            org_kind,
            user,
            treaty_status,
        } => {
            let mut store = Store::open(data)?;
            let auth = AuthDb::open(data)?;
            let spec = NewCoalition {
                state,
                name,
                org,
                org_name,
                org_kind: org_kind.parse::<OrgKind>()?,
                user,
                treaty_status: treaty_status.parse::<TreatyStatus>()?,
            };
            let id = admin::create_coalition(&mut store, &auth, &spec, now)?;
            println!("{id}");
        }
        AdminCommand::Invite {
            coalition,
            user,
            org,
            org_name,
            role,
            expires_hours,
            quic_port,
            quic_cert,
            no_quic,
        } => {
            if expires_hours <= 0 {
                bail!("--expires-hours must be positive");
            }
            let mut store = Store::open(data)?;
            let mut auth = AuthDb::open(data)?;
            let spec = InviteSpec {
                coalition: parse_coalition(&coalition)?,
                user,
                org,
                role,
            };
            let made = admin::invite(
                &mut store,
                &mut auth,
                &spec,
                org_name.as_deref(),
                now + expires_hours * 3600,
                now,
            )?;
            if made.added_member {
                eprintln!(
                    "added {} to the members of {} with the role {}",
                    spec.org, spec.coalition, spec.role
                );
            }
            let quic_port = match quic_port {
                Some(port) => Some(port),
                None if no_quic => None,
                None => recorded_quic_port(data)?,
            };
            let quic = if no_quic {
                None
            } else if let Some(quic_port) = quic_port {
                let identity = match &quic_cert {
                    Some(cert) => {
                        // Only the public half is needed for the pin.
                        let pem = std::fs::read(cert)
                            .with_context(|| format!("cannot read {}", cert.display()))?;
                        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
                            .with_context(|| {
                                format!("{} is not a PEM certificate", cert.display())
                            })?;
                        SpkiPin::of_certificate(&der)?
                    }
                    None => QuicIdentity::load_or_create(data, None, &[])?.pin(),
                };
                Some(QuicEndpoint {
                    port: quic_port,
                    pin: identity,
                })
            } else {
                eprintln!(
                    "the invite carries no QUIC pin: the relay has not served QUIC from {} \
                     (give --quic-port to include it); the device will sync over WebSocket",
                    data.display()
                );
                None
            };
            let invite = Invite {
                code: made.invite.code.clone(),
                quic,
            };
            println!("{invite}");
        }
        AdminCommand::Devices { coalition, json } => {
            let auth = AuthDb::open(data)?;
            let coalition = coalition.as_deref().map(parse_coalition).transpose()?;
            let devices = auth.devices(coalition.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                let time = |t: Option<i64>| {
                    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<36}  {:<16} {:<12} {:<12} {:<16} {:<16} revoked",
                    "device", "person", "org", "role", "enrolled", "last seen"
                );
                for d in devices {
                    println!(
                        "{:<36}  {:<16} {:<12} {:<12} {:<16} {:<16} {}",
                        d.id,
                        d.user,
                        d.org,
                        d.role,
                        time(Some(d.enrolled_at)),
                        time(d.last_seen_at),
                        time(d.revoked_at)
                    );
                }
            }
        }
        AdminCommand::Revoke { device } => {
            let auth = AuthDb::open(data)?;
            auth.revoke(&device)?;
            println!("revoked {device}; its live connections close within a second");
        }
        AdminCommand::Quarantine { command } => coalition_server::quarantine::admin(data, command)?,
    }
    Ok(())
}
