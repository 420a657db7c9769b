//! `aggregator` binary: parses configuration, sets up logging and metrics, runs the service.

use aggregator::config::SECRETS_FROM_FILES;
use aggregator::config::{Cli, Command};
use aggregator::settings::Settings;
use aggregator::{shutdown, startup, store::Store, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Secrets given as files become variables first (still one thread: no runtime yet).
    if let Err(e) = shared::secrets::load(SECRETS_FROM_FILES) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Invalid configuration exits here with a one-line error naming the variable.
    let cli = Cli::parse_args();
    if let Err(e) = cli.config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::init_logging(cli.config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings::from_config(&cli.config);
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => {
                Store::connect(&settings.store.database_url, 1).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Redrive { ids, dry_run } => {
                aggregator::redrive::run(&settings, &ids, dry_run).await
            }
            Command::Serve => {
                let prometheus = telemetry::init_metrics()?;
                let token = shutdown::CancellationToken::new();
                let force = shutdown::cancel_on_signal(token.clone());
                startup::run(settings, Some(prometheus), token, force).await
            }
        }
    });
    // Whatever still runs is abandoned, not waited for: after a drain cut short, a write
    // hung on the database, or an append waiting for the frozen WAL (`startup`).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
