//! The default cache directory: `$XDG_CACHE_HOME/ocidisk`, else
//! `$HOME/.cache/ocidisk`. One test per binary, since it sets the environment.

use anyhow::Result;
use layout::oci::{Image, OpenOptions};
use ocidisk_testkit::oci_writer::{ImageBuilder, OsImage, Payload};

#[test]
fn default_cache_dir_follows_xdg_then_home() -> Result<()> {
    let root = tempfile::tempdir()?;
    let built = ImageBuilder::monogon(
        OsImage::new().payload(Payload::new("system", vec![4u8; 5000]).zstd()),
    )
    .write(&root.path().join("image"))?;
    let hex = built
        .layer("system")
        .blob
        .digest
        .trim_start_matches("sha256:")
        .to_owned();

    let xdg = root.path().join("xdg");
    std::env::set_var("XDG_CACHE_HOME", &xdg);
    Image::open(&built.dir, &OpenOptions::default())?;
    assert!(xdg.join("ocidisk/zstd/sha256").join(&hex).is_file());

    let home = root.path().join("home");
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::set_var("HOME", &home);
    Image::open(&built.dir, &OpenOptions::default())?;
    assert!(home.join(".cache/ocidisk/zstd/sha256").join(&hex).is_file());

    std::env::remove_var("HOME");
    let e = Image::open(&built.dir, &OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("XDG_CACHE_HOME"), "{e}");
    Ok(())
}
