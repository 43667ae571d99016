//! `coalition-server`: run the relay, or administer its data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use coalition_core::model::{OrgKind, TreatyStatus};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_server::admin::{self, NewCoalition};
use coalition_server::auth::{AuthDb, InviteSpec};
use coalition_server::{Relay, RelayConfig};
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
}

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
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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

async fn serve(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
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
        print_demo(&setup, &addr, &args.data);
    }
    let relay = Relay::start(RelayConfig {
        data: args.data.clone(),
        max_docs: args.max_docs,
    })
    .await
    .with_context(|| format!("cannot open the data directory {}", args.data.display()))?;
    tracing::info!(%addr, data = %args.data.display(), "relay listening");
    relay.serve(listener, shutdown_signal()).await?;
    tracing::info!("relay stopped");
    Ok(())
}

fn print_demo(setup: &admin::DemoSetup, addr: &SocketAddr, data: &Path) {
    let http = format!("http://{addr}");
    let origin = if setup.created {
        "created now".to_string()
    } else {
        format!("already in {}", data.display())
    };
    println!("Demo coalition {} ({origin})", setup.coalition);
    println!("  sync URL:   ws://{addr}/sync   (Authorization: Bearer <credential>, or ?token=)");
    println!("  enroll URL: {http}/api/v1/enroll   (POST {{\"invite\", \"device\", \"actor\"}})");
    println!(
        "  API:        {http}/api/v1/coalitions/{}/report",
        setup.coalition
    );
    println!();
    println!(
        "One invite per demo role (single use, valid 7 days; new ones are printed at every start):"
    );
    for (person, invite) in &setup.invites {
        println!();
        println!("  {:<12} {:<9} {}", person.role, person.org, person.user);
        println!("    invite: {}", invite.code);
        println!(
            "    enroll: coalition --store ./devices/{} enroll --server {http} --invite {}",
            person.org, invite.code
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
            println!("{}", made.invite.code);
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
    }
    Ok(())
}
