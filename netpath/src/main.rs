use clap::Parser;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(netpath::observe::DEFAULT_LOG_FILTER),
    )
    .init();
    let cli = netpath::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(netpath::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netpath: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
