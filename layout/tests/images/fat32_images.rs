//! FAT32 file systems from `layout::fat32`, written out as raw images and
//! checked with the real tools: `fsck.fat -n` must find nothing to change,
//! `mtools` must list the tree and extract every file byte for byte,
//! `minfo` and `file` must see the label and geometry. No mounting.

use layout::blockmap::{BlockMap, BlockMapBuilder, Extent};
use layout::fat32::Fat32Builder;
use layout::source::{BlobFile, Content, Source};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

/// A raw image of a file system, with the map it was read from.
struct Image {
    dir: tempfile::TempDir,
    path: PathBuf,
    map: BlockMap,
}

impl Image {
    /// Places the extents in a block map and writes everything `read_at`
    /// returns into a sparse file.
    fn write(size: u64, extents: Vec<Extent>) -> Image {
        let mut b = BlockMapBuilder::new(size);
        b.place_extents("fat32", 0, extents);
        let map = b.build().expect("the extents form a block map");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fat32.img");
        let file = std::fs::File::create(&path).expect("create image");
        file.set_len(size).expect("size image");
        let mut buf = vec![0u8; MIB as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(MIB) as usize;
            map.read_at(at, &mut buf[..n]).expect("read_at");
            if buf[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&buf[..n], at).expect("write image");
            }
            at += n as u64;
        }
        Image { dir, path, map }
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.map.read_at(offset, &mut buf).expect("read_at");
        buf
    }

    /// `fsck.fat -n` finds nothing to change.
    fn fsck(&self) {
        if let Err(e) = self.fsck_report() {
            panic!("{e}");
        }
    }

    /// `fsck.fat -n -v`: exits 0 and reports nothing but its banner, the
    /// geometry and the summary line.
    fn fsck_report(&self) -> Result<(), String> {
        let out = run(Command::new("fsck.fat").arg("-n").arg("-v").arg(&self.path));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("fsck.fat -n failed:\n{text}"));
        }
        // With -v it describes the geometry; anything it would change or
        // warn about shows up as a line we do not expect.
        for line in text.lines() {
            let known = line.starts_with("fsck.fat ")
                || line.starts_with("Checking we can access")
                || line.starts_with("Boot sector contents:")
                || line.starts_with("System ID")
                || line.starts_with("Media byte")
                || line.contains("bytes per logical sector")
                || line.contains("bytes per cluster")
                || line.contains("reserved sector")
                || line.starts_with("First FAT starts at")
                || line.contains("FATs, 32 bit entries")
                || line.contains("bytes per FAT")
                || line.starts_with("Root directory start at cluster")
                || line.starts_with("Data area starts at")
                || line.contains("data clusters (")
                || line.contains("sectors/track,")
                || line.contains("hidden sectors")
                || line.contains("sectors total")
                || line.starts_with("Checking for unused clusters.")
                || line.starts_with("Checking free cluster summary.")
                || line.starts_with("Reclaiming unconnected clusters.")
                || line.starts_with("Starting check/repair pass.")
                || line.starts_with("Starting verification pass.")
                || line.starts_with("Checking for bad clusters.")
                || line.contains(" files, ")
                || line.trim().is_empty();
            if !known {
                return Err(format!("fsck.fat says {line:?}:\n{text}"));
            }
        }
        Ok(())
    }

    /// An mtools command on this image.
    fn mtool(&self, tool: &str, args: &[&str]) -> String {
        let out = run(Command::new(tool).arg("-i").arg(&self.path).args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tool} {args:?} failed: {stderr}");
        assert!(
            stderr.trim().is_empty(),
            "{tool} {args:?} complains: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every file and directory mtools sees, extracted with `mcopy -s`.
    fn extract(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        let out = self.dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir out");
        // Not `mdir -/`: on a volume with an empty root it fails with
        // "File not found", while the plain listing prints nothing.
        let listing = self.mtool("mdir", &["-b", "::"]);
        if !listing.trim().is_empty() {
            self.mtool(
                "mcopy",
                &["-s", "-n", "-m", "::/*", out.to_str().expect("utf-8 path")],
            );
        }
        let mut tree = BTreeMap::new();
        walk(&out, "", &mut tree);
        std::fs::remove_dir_all(&out).expect("rm out");
        tree
    }
}

fn walk(dir: &Path, prefix: &str, tree: &mut BTreeMap<String, Option<Vec<u8>>>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().into_string().expect("utf-8 name");
        let path = format!("{prefix}/{name}");
        if entry.file_type().expect("file type").is_dir() {
            tree.insert(path.clone(), None);
            walk(&entry.path(), &path, tree);
        } else {
            tree.insert(path, Some(std::fs::read(entry.path()).expect("read")));
        }
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    // UTF-8 so that mtools converts long names to and from Unicode.
    cmd.env("LC_ALL", "C.UTF-8");
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}); .ci/install-deps installs dosfstools, mtools and file",
            cmd.get_program()
        )
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A temporary file holding `data` at `offset`, between filler bytes, and
/// the content that names just `data` in it.
fn blob_region(data: &[u8], offset: u64) -> (tempfile::NamedTempFile, Content) {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&vec![0xA5; offset as usize]).expect("write");
    f.write_all(data).expect("write");
    f.write_all(&[0x5A; 777]).expect("write");
    f.flush().expect("flush");
    let file = Arc::new(BlobFile::open(f.path()).expect("open blob"));
    let content = Content {
        source: Source::File { file, offset },
        len: data.len() as u64,
    };
    (f, content)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The Monogon ESP: the kernel at both of its paths, both one extent into
/// the same region of one blob file, and node parameters inline.
fn monogon_esp(size: u64, kernel: &[u8]) -> (tempfile::NamedTempFile, Content, Image) {
    let (blob, content) = blob_region(kernel, 3 * MIB + 4321);
    let mut b = Fat32Builder::new(size, "MNGN_BOOT").expect("builder");
    b.add_file("EFI/BOOT/BOOTx64.EFI", content.clone())
        .expect("add");
    b.add_file("EFI/metropolis/boot-a.efi", content.clone())
        .expect("add");
    b.add_file(
        "metropolis/parameters.pb",
        Content::bytes(b"\x0a\x03abc".to_vec()),
    )
    .expect("add");
    let extents = b.build(0xC0FF_EE00).expect("build");
    (blob, content, Image::write(size, extents))
}

#[test]
fn monogon_esp_128mib() {
    let kernel = pattern(5 * MIB as usize + 999, 1);
    let (_blob, content, img) = monogon_esp(128 * MIB, &kernel);
    img.fsck();

    // Geometry: 2017 sectors per FAT, data from sector 8 + 2 × 2017.
    let bs = img.read(0, 512);
    assert_eq!(u32_at(&bs, 36), 2017);
    let first_data_sector = 8 + 2 * 2017u64;
    let minfo = img.mtool("minfo", &["::"]);
    assert!(minfo.contains("disk label=\"MNGN_BOOT  \""), "{minfo}");
    assert!(minfo.contains("Big fatlen=2017\n"), "{minfo}");
    assert!(minfo.contains("big size: 262144 sectors"), "{minfo}");
    assert!(minfo.contains("serial number: C0FFEE00"), "{minfo}");
    let file_out = run(Command::new("file").arg("-b").arg(&img.path));
    let file_out = String::from_utf8_lossy(&file_out.stdout);
    assert!(file_out.contains("label: \"MNGN_BOOT  \""), "{file_out}");
    assert!(file_out.contains("FAT (32 bit)"), "{file_out}");

    // Cluster math: root at 2, EFI at 3, BOOT at 4, BOOTx64.EFI from 5, so
    // its bytes start at the first data sector + 3.
    let at = (first_data_sector + 3) * 512;
    assert_eq!(img.read(at, 4096), kernel[..4096]);
    let (ext, _, _) = img.map.segments(at, 1).next().expect("segment");
    match &ext.source {
        Source::File { offset, .. } => assert_eq!(*offset, 3 * MIB + 4321),
        other => panic!("BOOTx64.EFI is not read from its blob: {other:?}"),
    }
    // Both kernel paths read from the blob, not from generated bytes.
    let summary = img.map.summary();
    assert_eq!(summary.file_bytes, 2 * content.len);

    let listing = img.mtool("mdir", &["-/", "-b", "::/"]);
    let mut paths: Vec<&str> = listing.lines().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "::/EFI/",
            "::/EFI/BOOT/",
            "::/EFI/BOOT/BOOTx64.EFI",
            "::/EFI/metropolis/",
            "::/EFI/metropolis/boot-a.efi",
            "::/metropolis/",
            "::/metropolis/parameters.pb",
        ]
    );
    let tree = img.extract();
    assert_eq!(tree["/EFI/BOOT/BOOTx64.EFI"].as_deref(), Some(&kernel[..]));
    assert_eq!(
        tree["/EFI/metropolis/boot-a.efi"].as_deref(),
        Some(&kernel[..])
    );
    assert_eq!(
        tree["/metropolis/parameters.pb"].as_deref(),
        Some(&b"\x0a\x03abc"[..])
    );
}

/// The fsck check above can fail: damage that fsck.fat repairs is reported.
#[test]
fn fsck_check_notices_damage() {
    let (_blob, _content, img) = monogon_esp(128 * MIB, &pattern(10_000, 2));
    img.fsck();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .expect("open image");
    // One more free cluster in FSInfo than there are.
    let free = u32_at(&img.read(512, 512), 488);
    file.write_all_at(&(free + 1).to_le_bytes(), 512 + 488)
        .expect("patch");
    let err = img.fsck_report().expect_err("wrong free count unnoticed");
    assert!(err.contains("Free cluster summary wrong"), "{err}");
    // A long-name entry whose checksum does not match its short name.
    file.write_all_at(&free.to_le_bytes(), 512 + 488)
        .expect("patch");
    img.fsck();
    let root = (8 + 2 * 2017) * 512;
    let lfn_checksum = root + 32 + 13;
    file.write_all_at(&[0xAB], lfn_checksum).expect("patch");
    img.fsck_report().expect_err("bad long name unnoticed");
}

#[test]
fn production_esp_384mib() {
    let kernel = pattern(20 * MIB as usize + 1, 3);
    let (_blob, _content, img) = monogon_esp(384 * MIB, &kernel);
    img.fsck();
    // (786432 + 2 + 129) / 130 sectors per FAT.
    assert_eq!(u32_at(&img.read(0, 512), 36), 6050);
    let minfo = img.mtool("minfo", &["::"]);
    assert!(minfo.contains("Big fatlen=6050\n"), "{minfo}");
    let tree = img.extract();
    assert_eq!(tree["/EFI/BOOT/BOOTx64.EFI"].as_deref(), Some(&kernel[..]));
    assert_eq!(
        tree["/EFI/metropolis/boot-a.efi"].as_deref(),
        Some(&kernel[..])
    );
}

/// Files whose bytes are regions of one host file, at odd offsets and
/// lengths: each is one extent into that file, and reads back intact.
#[test]
fn files_from_blob_regions_are_not_copied() {
    let data = pattern(3 * MIB as usize, 4);
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(&data).expect("write");
    let file = Arc::new(BlobFile::open(f.path()).expect("open"));
    let regions = [
        (1u64, 1000u64),
        (513, 512),
        (4097, MIB + 3),
        (2 * MIB, MIB),
        (17, 1),
    ];
    let mut b = Fat32Builder::new(64 * MIB, "REGIONS").expect("builder");
    for (i, &(offset, len)) in regions.iter().enumerate() {
        let content = Content {
            source: Source::File {
                file: file.clone(),
                offset,
            },
            len,
        };
        b.add_file(&format!("regions/region {i}.bin"), content)
            .expect("add");
    }
    let extents = b.build(1).expect("build");
    let from_file: Vec<(u64, u64)> = extents
        .iter()
        .filter_map(|e| match &e.source {
            Source::File { file: f, offset } if Arc::ptr_eq(f, &file) => Some((*offset, e.len)),
            _ => None,
        })
        .collect();
    assert_eq!(from_file, regions);
    let img = Image::write(64 * MIB, extents);
    img.fsck();
    let tree = img.extract();
    for (i, &(offset, len)) in regions.iter().enumerate() {
        let want = &data[offset as usize..(offset + len) as usize];
        assert_eq!(
            tree[&format!("/regions/region {i}.bin")].as_deref(),
            Some(want),
            "region {i}"
        );
    }
}

/// A volume with nothing in it: the case the random trees reach when every
/// name they draw is refused.
#[test]
fn empty_volume_checks_and_lists_nothing() {
    let b = Fat32Builder::new(40 * MIB, "NOTHING").expect("builder");
    let img = Image::write(40 * MIB, b.build(3).expect("build"));
    img.fsck();
    assert!(img.extract().is_empty());
}

#[test]
fn empty_files_and_directories() {
    let (_blob, empty_region) = blob_region(&[], 100);
    let mut b = Fat32Builder::new(40 * MIB, "EMPTY").expect("builder");
    b.add_file("empty inline", Content::bytes(Vec::new()))
        .expect("add");
    b.add_file("a/empty region", empty_region).expect("add");
    b.add_file("a/zeros", Content::zeros(0)).expect("add");
    b.add_dir("a/empty dir").expect("add");
    b.add_dir("b").expect("add");
    b.add_file("c/one byte", Content::bytes(vec![7]))
        .expect("add");
    let img = Image::write(40 * MIB, b.build(2).expect("build"));
    img.fsck();
    let tree = img.extract();
    let want: BTreeMap<String, Option<Vec<u8>>> = [
        ("/empty inline", Some(vec![])),
        ("/a", None),
        ("/a/empty region", Some(vec![])),
        ("/a/zeros", Some(vec![])),
        ("/a/empty dir", None),
        ("/b", None),
        ("/c", None),
        ("/c/one byte", Some(vec![7])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(tree, want);
}

/// 2000 files in one directory need 6002 entries, 376 clusters.
#[test]
fn many_files_in_one_directory() {
    let mut b = Fat32Builder::new(64 * MIB, "MANY").expect("builder");
    for i in 0..2000u32 {
        let len = (i as usize * 37) % 1500;
        b.add_file(
            &format!("many/file number {i}.txt"),
            Content::bytes(pattern(len, i)),
        )
        .expect("add");
    }
    let img = Image::write(64 * MIB, b.build(3).expect("build"));
    img.fsck();
    let listing = img.mtool("mdir", &["-b", "::/many"]);
    assert_eq!(listing.lines().count(), 2000);
    let tree = img.extract();
    assert_eq!(tree.len(), 2001);
    for i in (0..2000u32).step_by(97) {
        let len = (i as usize * 37) % 1500;
        assert_eq!(
            tree[&format!("/many/file number {i}.txt")].as_deref(),
            Some(&pattern(len, i)[..])
        );
    }
}

#[test]
fn deep_paths() {
    let mut b = Fat32Builder::new(40 * MIB, "DEEP").expect("builder");
    let dirs: Vec<String> = (0..40).map(|i| format!("level {i} directory")).collect();
    let deep = dirs.join("/");
    b.add_file(
        &format!("{deep}/leaf.txt"),
        Content::bytes(b"bottom".to_vec()),
    )
    .expect("add");
    b.add_file(
        &format!("{}/side.txt", dirs[..20].join("/")),
        Content::bytes(b"middle".to_vec()),
    )
    .expect("add");
    let img = Image::write(40 * MIB, b.build(4).expect("build"));
    img.fsck();
    let tree = img.extract();
    assert_eq!(tree.len(), 42);
    assert_eq!(
        tree[&format!("/{deep}/leaf.txt")].as_deref(),
        Some(&b"bottom"[..])
    );
}

/// Long names that share their first characters get `~N` short names;
/// names that are valid 8.3 keep theirs, even one that looks generated.
#[test]
fn short_name_tails() {
    let mut b = Fat32Builder::new(40 * MIB, "TAILS").expect("builder");
    let names = [
        "a long name 1.txt",
        "a long name 2.txt",
        "ALONGN~1.TXT",
        "README.md",
        "readme.markdown",
        "Makefile",
        "x.tar.gz",
    ];
    for (i, name) in names.iter().enumerate() {
        b.add_file(&format!("d/{name}"), Content::bytes(vec![i as u8; i + 1]))
            .expect("add");
    }
    for i in 0..15 {
        b.add_file(&format!("d/longprefix {i}"), Content::bytes(vec![]))
            .expect("add");
    }
    let img = Image::write(40 * MIB, b.build(5).expect("build"));
    img.fsck();
    let listing = img.mtool("mdir", &["::/d"]);
    // mdir prints "BASE     EXT  size date time  long name".
    let short_of = |long: &str| -> String {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {long}")) || l.starts_with(long))
            .unwrap_or_else(|| panic!("{long} not listed:\n{listing}"));
        let base = line.get(..8).unwrap_or_default().trim_end();
        match line.get(9..12).unwrap_or_default().trim_end() {
            "" => base.to_owned(),
            ext => format!("{base}.{ext}"),
        }
    };
    assert_eq!(short_of("a long name 1.txt"), "ALONGN~2.TXT");
    assert_eq!(short_of("a long name 2.txt"), "ALONGN~3.TXT");
    assert_eq!(short_of("readme.markdown"), "README~1.MAR");
    assert_eq!(short_of("x.tar.gz"), "XTAR~1.GZ");
    assert_eq!(short_of("longprefix 0"), "LONGPR~1");
    assert_eq!(short_of("longprefix 8"), "LONGPR~9");
    assert_eq!(short_of("longprefix 9"), "LONGP~10");
    assert_eq!(short_of("ALONGN~1.TXT"), "ALONGN~1.TXT");
    assert_eq!(short_of("README.md"), "README.MD");
    assert_eq!(short_of("Makefile"), "MAKEFILE");
    let tree = img.extract();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            tree[&format!("/d/{name}")].as_deref(),
            Some(&vec![i as u8; i + 1][..])
        );
    }
}

/// Long names are UTF-16. (Characters outside the BMP are left to the unit
/// tests: mtools 4.0.32 shows each surrogate as `_`.)
#[test]
fn unicode_names() {
    let names = [
        "résumé.txt",
        "日本語のファイル名.efi",
        "Ünïcödé dir",
        "ß and Σ",
    ];
    let mut b = Fat32Builder::new(40 * MIB, "UNICODE").expect("builder");
    for (i, name) in names.iter().enumerate() {
        b.add_file(
            &format!("u/{name}"),
            Content::bytes(pattern(100 + i, i as u32)),
        )
        .expect("add");
    }
    let img = Image::write(40 * MIB, b.build(6).expect("build"));
    img.fsck();
    let tree = img.extract();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            tree.get(&format!("/u/{name}")).and_then(|v| v.as_deref()),
            Some(&pattern(100 + i, i as u32)[..]),
            "{name}: {:?}",
            tree.keys().collect::<Vec<_>>()
        );
    }
}

/// A path made of names from a small pool (so that parents are shared,
/// names collide and files stand in the way) and random long names.
fn path_strategy() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("EFI".to_owned()),
        Just("efi".to_owned()),
        Just("boot".to_owned()),
        "[a-c]{1,2}",
        "[a-zA-Z0-9 ._~+,;=\\[\\]{}!#$%&'()@^é日-]{1,24}",
    ];
    prop::collection::vec(name, 1..5).prop_map(|v| v.join("/"))
}

fn fold(path: &str) -> String {
    path.chars().flat_map(char::to_uppercase).collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random trees: fsck.fat finds nothing to fix, and mcopy extracts
    /// exactly what was added (paths compared ignoring case, as FAT does).
    #[test]
    fn random_trees_check_and_round_trip(
        ops in prop::collection::vec(
            (any::<bool>(), path_strategy(), 0usize..3000, any::<u32>()),
            1..40,
        ),
    ) {
        let size = 40 * MIB;
        let mut b = Fat32Builder::new(size, "PROPTEST").expect("builder");
        let mut want: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for (dir, path, len, seed) in ops {
            let added = if dir {
                b.add_dir(&path)
            } else {
                b.add_file(&path, Content::bytes(pattern(len, seed)))
            };
            if added.is_err() {
                continue;
            }
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                want.insert(fold(&format!("/{}", parts[..i].join("/"))), None);
            }
            let content = if dir { None } else { Some(pattern(len, seed)) };
            want.insert(fold(&format!("/{path}")), content);
        }
        let img = Image::write(size, b.build(seed_of(&want)).expect("build"));
        img.fsck();
        let got: BTreeMap<String, Option<Vec<u8>>> =
            img.extract().into_iter().map(|(k, v)| (fold(&k), v)).collect();
        prop_assert_eq!(got, want);
    }
}

/// A volume id that varies with the tree.
fn seed_of(tree: &BTreeMap<String, Option<Vec<u8>>>) -> u32 {
    (tree.len() as u32).wrapping_mul(2_654_435_761)
}
