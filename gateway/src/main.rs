//! The `gateway` command line: `gateway run` (serve; drains on SIGTERM/SIGINT, reloads on SIGHUP,
//! `--upgrade` takes over a running gateway's listeners), `gateway check` (validate a
//! configuration and its plugins), `gateway plugin test` and `gateway plugin componentize`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::Config;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "An LLM edge gateway in front of Amazon Bedrock, Vertex AI and the Anthropic API, with WebAssembly plugins"
)]
struct Cli {
    /// Log format on stderr: `text` (default) or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listeners over from a running gateway (send it SIGQUIT once this one starts).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration: print each problem with its key path, exit non-zero if any.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Plugin tools.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run a plugin offline through all its phases on a sample request and print its decisions.
    Test {
        /// The plugin (component, or core module with an embedded component type).
        plugin: PathBuf,
        /// The sample request (JSON; see plugin-sdk/README.md).
        #[arg(long)]
        request: PathBuf,
        /// A TOML file whose table is the plugin's `[plugins.config]`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Turn a core module built with the SDK into a component (what `make plugins` does).
    Componentize {
        /// The core module.
        input: PathBuf,
        /// Where to write the component.
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => match check_plugins(&loaded) {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(problem) => {
                    eprintln!("{}: {problem}", config.display());
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                for p in &e.0 {
                    eprintln!("{}: {p}", config.display());
                }
                ExitCode::FAILURE
            }
        },
        Command::Plugin(command) => match plugin_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway plugin: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            upgrade,
        } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    for p in &e.0 {
                        eprintln!("{}: {p}", path.display());
                    }
                    return ExitCode::FAILURE;
                }
            };
            match gateway::server::run(config, &path, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn plugin_command(command: PluginCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        PluginCommand::Componentize { input, output } => {
            let bytes =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let component = gateway::plugin::engine::componentize(&bytes)?;
            std::fs::write(&output, &component)
                .with_context(|| format!("writing {}", output.display()))?;
            Ok(())
        }
        PluginCommand::Test {
            plugin,
            request,
            config,
        } => {
            let sample = std::fs::read_to_string(&request)
                .with_context(|| format!("reading {}", request.display()))?;
            let sample: gateway::plugin::offline::SampleRequest = serde_json::from_str(&sample)
                .with_context(|| format!("{} is not a sample request", request.display()))?;
            let table = match &config {
                Some(path) => toml::from_str::<toml::Table>(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not TOML", path.display()))?,
                None => toml::Table::new(),
            };
            let name = plugin
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_string();
            let mut plugin_config: gateway::config::PluginConfig =
                toml::Value::Table(toml::toml! {
                    name = name
                    path = (plugin.display().to_string())
                })
                .try_into()?;
            plugin_config.config = table;
            let (audit, records) = gateway::audit::AuditSink::collecting();
            let services = std::sync::Arc::new(gateway::plugin::HostServices::local(
                audit,
                std::sync::Arc::new(gateway::metrics::Metrics::new()),
                gateway::catalog::Catalog::new(&[]),
            ));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let mut report = runtime.block_on(gateway::plugin::offline::run(
                plugin_config,
                sample,
                std::sync::Arc::clone(&services),
            ))?;
            let audit: Vec<serde_json::Value> = records
                .lock()
                .map(|r| {
                    r.iter()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect()
                })
                .unwrap_or_default();
            report["audit_records"] = audit.into();
            report["metrics"] = services
                .metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("plugin_"))
                .collect::<Vec<_>>()
                .into();
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// Loads every plugin of a valid configuration (compile, link, `init` with its config), so a
/// plugin that would not start is reported by `check` rather than at start-up.
fn check_plugins(config: &Config) -> anyhow::Result<()> {
    if config.plugins.is_empty() {
        return Ok(());
    }
    let services = std::sync::Arc::new(gateway::plugin::HostServices::local(
        gateway::audit::AuditSink::collecting().0,
        std::sync::Arc::new(gateway::metrics::Metrics::new()),
        gateway::catalog::Catalog::new(&config.models),
    ));
    let runtime_config = gateway::config::PluginRuntimeConfig {
        max_instances: 16,
        ..config.plugin_runtime.clone()
    };
    let engine = std::sync::Arc::new(gateway::plugin::PluginEngine::new(
        &runtime_config,
        services,
    )?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(engine.load_all(&config.plugins))
        .map(|_| ())
        .map_err(|(name, e)| {
            let i = config
                .plugins
                .iter()
                .position(|p| p.name == name)
                .unwrap_or(0);
            anyhow::anyhow!("plugins[{i}] ({name}): {e}")
        })
}
