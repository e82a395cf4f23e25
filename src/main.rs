use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = storepulse::cli::Cli::parse();
    match storepulse::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storepulse: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
