use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = apptheus::cli::Args::parse();
    apptheus::logging::init(args.log_level, args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(apptheus::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e = apptheus::logging::error_chain(&e);
            tracing::error!(error = %e, "exiting");
            eprintln!("apptheus: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
