//! `storepulse generate`: a synthetic purchase log in the kz.csv format.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of data lines to write (the real file has 2,633,521).
    #[arg(long, env = "STOREPULSE_ROWS", default_value_t = 50_000)]
    pub rows: u64,
    /// Seed: the same seed and rows give the same file.
    #[arg(long, env = "STOREPULSE_SEED", default_value_t = 2020)]
    pub seed: u64,
    /// Output file.
    #[arg(long, env = "STOREPULSE_OUT")]
    pub out: PathBuf,
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let stats = crate::generate::write_file(&args.out, args.rows, args.seed)?;
    tracing::info!(
        lines = stats.lines,
        path = %args.out.display(),
        bytes = stats.bytes,
        "wrote the synthetic log"
    );
    Ok(())
}
