//! TODO(skeleton): `ocidisk export`.

/// Arguments of `ocidisk export`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("export: not implemented yet")
}
