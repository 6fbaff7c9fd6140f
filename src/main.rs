//! The `gateway` binary: argument parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use gateway::cli::{
    self, CreateArgs, DeliveriesArgs, MigrateAction, RoleCreateArgs, RoleUpdateArgs, TailArgs,
    UpdateArgs, WebhookCreateArgs,
};
use gateway::config::{Limits, Need};

/// See Cargo.toml: the proxy makes many small allocations per request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gateway", version, about = "API-key gateway built on Pingora")]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "GATEWAY_CONFIG",
        default_value = "conf/gateway.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and admin listeners.
    Serve,
    /// Validate the configuration and print every error.
    CheckConfig,
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateCmd>,
    },
    /// Manage API keys directly in the database.
    Keys {
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// Manage roles (named sets of scopes keys hold) directly in the database.
    Roles {
        #[command(subcommand)]
        action: RolesCmd,
    },
    /// Manage webhook endpoints directly in the database.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksCmd,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Read request logs straight from the database; retention by hand.
    Logs {
        #[command(subcommand)]
        action: LogsCmd,
    },
    /// Probe the admin listener's readiness (the image's HEALTHCHECK):
    /// exit 0 on 200, non-zero with a one-line reason otherwise.
    Health {
        /// Default: /health/ready on the config's admin.listen when -c (or
        /// GATEWAY_CONFIG) is given, else http://127.0.0.1:9090/health/ready.
        #[arg(long)]
        url: Option<String>,
        /// Bound on the whole probe, e.g. 2s.
        #[arg(long, value_parser = cli::parse_duration, default_value = "2s")]
        timeout: std::time::Duration,
    },
    /// Run the demo upstream used by the walkthrough and tests.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum MigrateCmd {
    /// Apply every pending migration (the default).
    Up,
    /// Revert the last N applied migrations.
    Down {
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Show applied and pending migrations.
    Status,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key and print it (the plaintext is shown only once).
    Create(CreateCmd),
    /// List keys, newest first.
    List {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; the proxy rejects it within a second.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret; the old one works for the grace period.
    Rotate {
        id: String,
        /// How long the old secret keeps working: 0 or e.g. 30m, 1h, 7d (at most 7d).
        #[arg(long, value_parser = cli::parse_grace, default_value = "1d")]
        grace: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, description, scopes, roles, expiry, limits or metadata.
    Update(UpdateCmd),
}

#[derive(Subcommand)]
enum RolesCmd {
    /// Create a role.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes the role grants, e.g. `read:orders,write:orders`.
        #[arg(long, value_parser = cli::parse_scopes, default_value = "")]
        scopes: std::vec::Vec<gateway::keys::scope::Scope>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List roles, newest first, with how many keys hold each.
    List {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Change a role (by id or name); new scopes reach every key holding it.
    Update {
        role: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Replaces the scopes: comma-separated.
        #[arg(long, value_parser = cli::parse_scopes)]
        scopes: Option<std::vec::Vec<gateway::keys::scope::Scope>>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a role (by id or name); every key holding it loses it.
    Delete {
        role: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WebhooksCmd {
    /// List endpoints, newest first (never their secrets).
    List {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Create an endpoint and print its signing secret (shown only once).
    Create {
        /// http(s) URL; must pass the SSRF guard unless
        /// `webhooks.allow_private_targets` is set.
        #[arg(long)]
        url: String,
        /// Comma-separated event names, `api_key.*` or `*`.
        #[arg(long, value_parser = cli::parse_events)]
        events: std::vec::Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Create it disabled (`disabled_reason` = manual).
        #[arg(long)]
        disabled: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send one `webhook.test` event now, from this process, and print the
    /// result; exits non-zero unless the endpoint answered 2xx.
    Test {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List an endpoint's deliveries, newest first (failed ones are the
    /// dead letters; replay them with POST .../retry on the admin API).
    Deliveries {
        id: String,
        #[arg(long, value_parser = ["pending", "succeeded", "failed"])]
        status: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain and report the first entry that was altered,
    /// removed or reordered.
    Verify,
}

#[derive(Subcommand)]
enum LogsCmd {
    /// Follow new request records, one line each, until Ctrl-C.
    Tail(TailCmd),
    /// Drop request-log partitions older than `retention_days` and rollups
    /// older than `rollup_retention_days` now, as housekeeping does.
    Prune {
        /// Print what would be dropped; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct TailCmd {
    /// Only this key's requests (a key id).
    #[arg(long)]
    key: Option<String>,
    /// Only this route's requests (its name).
    #[arg(long)]
    route: Option<String>,
    /// Start this far back, e.g. 15m or 1h (default: only new records).
    #[arg(long, value_parser = cli::parse_duration)]
    since: Option<std::time::Duration>,
    /// Stop after printing this many records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print each record as one JSON object (the admin API's shape).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UpdateCmd {
    id: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Replaces the scopes: comma-separated, e.g. `read:orders,write:orders`.
    #[arg(long, value_parser = cli::parse_scopes)]
    scopes: Option<std::vec::Vec<gateway::keys::scope::Scope>>,
    /// New lifetime from now, such as 30d.
    #[arg(long, value_parser = cli::parse_duration, conflicts_with = "no_expiry")]
    expires_in: Option<std::time::Duration>,
    /// Remove the expiry.
    #[arg(long)]
    no_expiry: bool,
    /// With --per-hour and --per-day: replace the key's rate-limit overrides
    /// as a set; tiers not given fall back to the configured default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64), conflicts_with = "clear_limits")]
    per_minute: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64), conflicts_with = "clear_limits")]
    per_hour: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64), conflicts_with = "clear_limits")]
    per_day: Option<u32>,
    /// Remove every rate-limit override.
    #[arg(long)]
    clear_limits: bool,
    /// Replaces the metadata: a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Replaces the key's roles: repeat for each role name.
    #[arg(long = "role", conflicts_with = "no_roles")]
    roles: Option<Vec<String>>,
    /// Remove every role from the key.
    #[arg(long)]
    no_roles: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CreateCmd {
    #[arg(long)]
    name: String,
    /// Comma-separated scopes, e.g. `read:orders,write:orders`.
    #[arg(long, value_parser = cli::parse_scopes, default_value = "")]
    scopes: std::vec::Vec<gateway::keys::scope::Scope>,
    #[arg(long, default_value = "")]
    description: String,
    /// Lifetime such as 30d, 12h, 15m.
    #[arg(long, value_parser = cli::parse_duration)]
    expires_in: Option<std::time::Duration>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    per_minute: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    per_hour: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    per_day: Option<u32>,
    /// A role the key holds (by name); repeat for several.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Print one JSON object with `id`, `key` and the key's other fields.
    #[arg(long)]
    json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli, config_given: bool) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            // Read as a reload reads it, so the running file's SHA-256 is
            // the one `GET /api/v1/config` reports.
            let source = gateway::reload::ConfigSource::new(cli.config.clone(), std::env::vars());
            let loaded = source
                .load()
                .map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
            gateway::server::run(source, loaded)
        }
        Command::CheckConfig => {
            cli::load_config(&cli.config, Need::Serve)?;
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::Migrate { action } => {
            let cfg = cli::load_config(&cli.config, Need::Database)?;
            let action = match action {
                None | Some(MigrateCmd::Up) => MigrateAction::Up,
                Some(MigrateCmd::Down { n }) => MigrateAction::Down(n),
                Some(MigrateCmd::Status) => MigrateAction::Status,
            };
            runtime()?.block_on(cli::migrate(&cfg, action))
        }
        Command::Keys { action } => {
            let cfg = cli::load_config(&cli.config, Need::Keys)?;
            let rt = runtime()?;
            match action {
                KeysCmd::Create(c) => rt.block_on(cli::create_key(
                    &cfg,
                    CreateArgs {
                        name: c.name,
                        description: c.description,
                        scopes: c.scopes,
                        expires_in: c.expires_in,
                        limits: Limits {
                            per_minute: c.per_minute,
                            per_hour: c.per_hour,
                            per_day: c.per_day,
                        },
                        roles: c.roles,
                        json: c.json,
                    },
                )),
                KeysCmd::List { limit, json } => rt.block_on(cli::list_keys(&cfg, limit, json)),
                KeysCmd::Revoke { id, json } => rt.block_on(cli::revoke_key(&cfg, &id, json)),
                KeysCmd::Rotate { id, grace, json } => {
                    rt.block_on(cli::rotate_key(&cfg, &id, grace, json))
                }
                KeysCmd::Update(u) => {
                    let limits = (u.per_minute.is_some()
                        || u.per_hour.is_some()
                        || u.per_day.is_some()
                        || u.clear_limits)
                        .then_some(Limits {
                            per_minute: u.per_minute,
                            per_hour: u.per_hour,
                            per_day: u.per_day,
                        });
                    rt.block_on(cli::update_key(
                        &cfg,
                        UpdateArgs {
                            id: u.id,
                            name: u.name,
                            description: u.description,
                            scopes: u.scopes,
                            expires_in: u.expires_in,
                            no_expiry: u.no_expiry,
                            limits,
                            metadata: u.metadata,
                            roles: if u.no_roles {
                                Some(Vec::new())
                            } else {
                                u.roles
                            },
                            json: u.json,
                        },
                    ))
                }
            }
        }
        Command::Roles { action } => {
            let cfg = cli::load_config(&cli.config, Need::Keys)?;
            let rt = runtime()?;
            match action {
                RolesCmd::Create {
                    name,
                    scopes,
                    description,
                    json,
                } => rt.block_on(cli::create_role(
                    &cfg,
                    RoleCreateArgs {
                        name,
                        description,
                        scopes,
                        json,
                    },
                )),
                RolesCmd::List { limit, json } => rt.block_on(cli::list_roles(&cfg, limit, json)),
                RolesCmd::Update {
                    role,
                    name,
                    description,
                    scopes,
                    json,
                } => rt.block_on(cli::update_role(
                    &cfg,
                    RoleUpdateArgs {
                        role,
                        name,
                        description,
                        scopes,
                        json,
                    },
                )),
                RolesCmd::Delete { role, json } => rt.block_on(cli::delete_role(&cfg, &role, json)),
            }
        }
        Command::Webhooks { action } => {
            let cfg = cli::load_config(&cli.config, Need::Keys)?;
            let rt = runtime()?;
            match action {
                WebhooksCmd::List { limit, json } => {
                    rt.block_on(cli::list_webhooks(&cfg, limit, json))
                }
                WebhooksCmd::Create {
                    url,
                    events,
                    description,
                    disabled,
                    json,
                } => rt.block_on(cli::create_webhook(
                    &cfg,
                    WebhookCreateArgs {
                        url,
                        events,
                        description,
                        disabled,
                        json,
                    },
                )),
                WebhooksCmd::Test { id, json } => rt.block_on(cli::test_webhook(&cfg, &id, json)),
                WebhooksCmd::Deliveries {
                    id,
                    status,
                    event_type,
                    limit,
                    json,
                } => rt.block_on(cli::list_webhook_deliveries(
                    &cfg,
                    DeliveriesArgs {
                        id,
                        status,
                        event_type,
                        limit,
                        json,
                    },
                )),
            }
        }
        Command::Audit {
            action: AuditCmd::Verify,
        } => {
            let cfg = cli::load_config(&cli.config, Need::Keys)?;
            runtime()?.block_on(cli::verify_audit(&cfg))
        }
        Command::Logs {
            action: LogsCmd::Tail(t),
        } => {
            let cfg = cli::load_config(&cli.config, Need::Database)?;
            runtime()?.block_on(cli::tail_logs(
                &cfg,
                TailArgs {
                    key: t.key,
                    route: t.route,
                    since: t.since,
                    limit: t.limit,
                    json: t.json,
                },
            ))
        }
        Command::Logs {
            action: LogsCmd::Prune { dry_run },
        } => {
            let cfg = cli::load_config(&cli.config, Need::Database)?;
            runtime()?.block_on(cli::prune_logs(&cfg, dry_run))
        }
        Command::Health { url, timeout } => {
            let url = match url {
                Some(u) => u,
                None if config_given => {
                    let cfg = cli::load_config(&cli.config, Need::Database)?;
                    cli::health_url(cfg.admin_listen)
                }
                None => cli::DEFAULT_HEALTH_URL.to_string(),
            };
            runtime()?.block_on(cli::health(&url, timeout))
        }
        Command::DemoUpstream { listen } => {
            gateway::telemetry::init_logging("info", gateway::config::LogFormat::Text);
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                eprintln!("demo upstream listening on {listen}");
                gateway::demo::serve(listener).await;
                Ok(())
            })
        }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // `gateway health` reads the config only when one was asked for.
    let config_given = !matches!(
        matches.value_source("config"),
        None | Some(clap::parser::ValueSource::DefaultValue)
    );
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, config_given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
