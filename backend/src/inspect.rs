//! TODO(skeleton): `ocidisk inspect`.

/// Arguments of `ocidisk inspect`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("inspect: not implemented yet")
}
