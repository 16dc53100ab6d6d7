//! Exporters: a manifest's DAG as a real batch scheduler's jobs. Every job runs `rmdistill node run` against the
//! shared store, which checks the cache first, so any scheduler may retry any job.

use crate::cli::Common;
use crate::plan::Plan;
use crate::store::Store;

#[derive(clap::Subcommand, Clone)]
pub enum Target {
    /// Slurm: sbatch jobs chained with --dependency=afterok.
    Slurm,
}

pub fn export(_plan: &Plan, _store: &Store, _common: &Common, target: Target) -> anyhow::Result<()> {
    match target {
        Target::Slurm => anyhow::bail!("export slurm is not implemented yet"),
    }
}
