//! TODO(skeleton): `ocidisk overlay info|reset`.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print an overlay's sizes and how much of it is allocated.
    Info,
}

pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("overlay: not implemented yet")
}
