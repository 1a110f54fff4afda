//! TODO(skeleton): `ocidisk serve`.

/// Arguments of `ocidisk serve`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("serve: not implemented yet")
}
