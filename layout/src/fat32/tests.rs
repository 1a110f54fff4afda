//! Unit tests of the FAT32 builder, with a small independent reader that
//! walks the generated file system the way a driver would.

use super::*;
use crate::blockmap::{BlockMap, BlockMapBuilder};
use crate::source::BlobFile;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;

const MIB: u64 = 1 << 20;
const ESP: u64 = 128 * MIB;

fn map_of(size: u64, extents: Vec<Extent>) -> BlockMap {
    let mut b = BlockMapBuilder::new(size);
    b.place_extents("fat32", 0, extents);
    b.build().unwrap()
}

fn read(map: &BlockMap, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    map.read_at(offset, &mut buf).unwrap();
    buf
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What the reader finds at a path.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Dir,
    File(Vec<u8>),
}

/// A minimal FAT32 reader, written from the specification and independent
/// of the builder's code: it follows cluster chains through the FAT and
/// checks long-name checksums and sequence numbers as it goes.
struct Reader<'a> {
    map: &'a BlockMap,
    fat_offset: u64,
    data_offset: u64,
    clusters: u32,
}

impl<'a> Reader<'a> {
    fn new(map: &'a BlockMap) -> (Reader<'a>, Vec<u8>) {
        let bs = read(map, 0, 512);
        assert_eq!(u16_at(&bs, 11), 512);
        let reserved = u64::from(u16_at(&bs, 14));
        let fat_sectors = u64::from(u32_at(&bs, 36));
        let total = u64::from(u32_at(&bs, 32));
        let data_sector = reserved + 2 * fat_sectors;
        let r = Reader {
            map,
            fat_offset: reserved * 512,
            data_offset: data_sector * 512,
            clusters: (total - data_sector) as u32,
        };
        (r, bs)
    }

    fn fat(&self, cluster: u32) -> u32 {
        u32_at(
            &read(self.map, self.fat_offset + u64::from(cluster) * 4, 4),
            0,
        ) & 0x0FFF_FFFF
    }

    fn chain(&self, first: u32) -> Vec<u32> {
        let mut out = vec![first];
        let mut c = first;
        loop {
            let next = self.fat(c);
            if next >= 0x0FFF_FFF8 {
                return out;
            }
            assert!(
                next >= 2 && next < self.clusters + 2,
                "bad link {c} -> {next}"
            );
            assert!(out.len() <= self.clusters as usize, "loop in chain");
            out.push(next);
            c = next;
        }
    }

    fn data(&self, first: u32, len: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for c in self.chain(first) {
            out.extend(read(
                self.map,
                self.data_offset + u64::from(c - 2) * 512,
                512,
            ));
        }
        if let Some(len) = len {
            assert!(out.len() as u64 >= len && (out.len() as u64) < len + 512);
            out.truncate(len as usize);
        }
        out
    }

    /// Entries of a directory: (long name, short name, attr, cluster, size).
    fn dir(&self, first: u32) -> Vec<(String, [u8; 11], u8, u32, u32)> {
        let bytes = self.data(first, None);
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, u8, Vec<u16>)> = Vec::new();
        for e in bytes.chunks(32) {
            if e[0] == 0 {
                break;
            }
            let attr = e[11];
            if attr == 0x0F {
                let units: Vec<u16> = (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2))
                    .map(|at| u16_at(e, at))
                    .collect();
                lfn.push((e[0], e[13], units));
                continue;
            }
            let short: [u8; 11] = e[..11].try_into().unwrap();
            if attr & 0x08 != 0 || short[0] == b'.' {
                assert!(lfn.is_empty());
                continue;
            }
            // Long-name entries: last first, numbered down to 1, checksummed.
            assert!(!lfn.is_empty(), "entry {short:?} has no long name");
            let sum = short
                .iter()
                .fold(0u8, |s, &b| (((s & 1) << 7) | (s >> 1)).wrapping_add(b));
            let n = lfn.len();
            let mut units = Vec::new();
            for (i, (seq, check, part)) in lfn.drain(..).rev().enumerate() {
                assert_eq!(check, sum);
                let want = (i + 1) as u8 | if i + 1 == n { 0x40 } else { 0 };
                assert_eq!(seq, want);
                units.extend(part);
            }
            let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
            let name = String::from_utf16(&units[..end]).unwrap();
            let cluster = (u32::from(u16_at(e, 20)) << 16) | u32::from(u16_at(e, 26));
            out.push((name, short, attr, cluster, u32_at(e, 28)));
        }
        out
    }

    fn walk(&self, first: u32, prefix: &str, out: &mut BTreeMap<String, Found>) {
        for (name, _, attr, cluster, size) in self.dir(first) {
            let path = format!("{prefix}/{name}");
            if attr & 0x10 != 0 {
                out.insert(path.clone(), Found::Dir);
                self.walk(cluster, &path, out);
            } else if size == 0 {
                assert_eq!(cluster, 0);
                out.insert(path, Found::File(Vec::new()));
            } else {
                out.insert(path, Found::File(self.data(cluster, Some(size.into()))));
            }
        }
    }

    fn tree(&self) -> BTreeMap<String, Found> {
        let mut out = BTreeMap::new();
        self.walk(2, "", &mut out);
        out
    }
}

/// Checks that extents cover `[0, size)` in order without gaps.
fn assert_covers(extents: &[Extent], size: u64) {
    let mut pos = 0;
    for e in extents {
        assert_eq!(e.start, pos);
        assert!(e.len > 0);
        pos = e.end();
    }
    assert_eq!(pos, size);
}

fn blob(data: &[u8], at: usize) -> (tempfile::NamedTempFile, Arc<BlobFile>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0xEEu8; at]).unwrap();
    f.write_all(data).unwrap();
    f.write_all(&[0xEE; 100]).unwrap();
    f.flush().unwrap();
    let b = Arc::new(BlobFile::open(f.path()).unwrap());
    (f, b)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn monogon_esp() {
    let kernel = pattern(3 * MIB as usize + 123, 7);
    let (_f, file) = blob(&kernel, 4096 + 17);
    let content = Content {
        source: Source::File {
            file: file.clone(),
            offset: 4096 + 17,
        },
        len: kernel.len() as u64,
    };
    let mut b = Fat32Builder::new(ESP, "MNGN_BOOT").unwrap();
    b.add_file("EFI/BOOT/BOOTx64.EFI", content.clone()).unwrap();
    b.add_file("EFI/metropolis/boot-a.efi", content).unwrap();
    b.add_file(
        "metropolis/parameters.pb",
        Content::bytes(b"params".to_vec()),
    )
    .unwrap();
    let extents = b.build(0x1234_5678).unwrap();
    assert_covers(&extents, ESP);

    // The kernel's bytes are never copied: both files are one extent each
    // into the blob, at the kernel's offset.
    let from_blob: Vec<&Extent> = extents
        .iter()
        .filter(|e| matches!(&e.source, Source::File { file: f, offset } if Arc::ptr_eq(f, &file) && *offset == 4096 + 17))
        .collect();
    assert_eq!(from_blob.len(), 2);
    assert!(from_blob.iter().all(|e| e.len == kernel.len() as u64));
    // Generated memory, counting each shared buffer once: the FAT's used
    // part (4 bytes per cluster of the two 3 MiB files) dominates.
    let mut buffers: Vec<&Arc<[u8]>> = Vec::new();
    for e in &extents {
        if let Source::Bytes { data, .. } = &e.source {
            if !buffers.iter().any(|b| Arc::ptr_eq(b, data)) {
                buffers.push(data);
            }
        }
    }
    assert_eq!(
        buffers.len(),
        4,
        "boot sectors, FAT, directories, parameters.pb"
    );
    let generated: usize = buffers.iter().map(|b| b.len()).sum();
    assert!(generated < 64 * 1024, "{generated} bytes generated");

    let map = map_of(ESP, extents);
    let (r, bs) = Reader::new(&map);
    assert_eq!(&bs[0..3], &[0xEB, 0xFE, 0x90]);
    assert_eq!(bs[13], 1);
    assert_eq!(u16_at(&bs, 14), 8);
    assert_eq!(bs[16], 2);
    assert_eq!(bs[21], 0xF8);
    assert_eq!(u32_at(&bs, 32), 262144);
    assert_eq!(u32_at(&bs, 36), 2017);
    assert_eq!(u32_at(&bs, 44), 2);
    assert_eq!(u16_at(&bs, 48), 1);
    assert_eq!(u16_at(&bs, 50), 6);
    assert_eq!(u32_at(&bs, 67), 0x1234_5678);
    assert_eq!(&bs[71..82], b"MNGN_BOOT  ");
    assert_eq!(&bs[82..90], b"FAT32   ");
    assert_eq!(read(&map, 6 * 512, 1024), read(&map, 0, 1024));
    assert_eq!(r.data_offset, 4042 * 512);

    // Clusters in preorder: root, EFI, BOOT, BOOTx64.EFI, metropolis,
    // boot-a.efi, metropolis, parameters.pb.
    let kernel_clusters = (kernel.len() as u32).div_ceil(512);
    let root = r.dir(2);
    assert_eq!(root.len(), 2);
    assert_eq!(&root[0].0, "EFI");
    assert_eq!(root[0].3, 3);
    let efi = r.dir(3);
    assert_eq!(efi[0].0, "BOOT");
    assert_eq!(efi[0].3, 4);
    let boot = r.dir(4);
    assert_eq!(boot[0].0, "BOOTx64.EFI");
    assert_eq!(&boot[0].1, b"BOOTX64 EFI");
    assert_eq!(boot[0].3, 5);
    assert_eq!(efi[1].0, "metropolis");
    assert_eq!(efi[1].3, 5 + kernel_clusters);
    assert_eq!(r.dir(5 + kernel_clusters)[0].3, 6 + kernel_clusters);
    assert_eq!(root[1].0, "metropolis");
    assert_eq!(root[1].3, 6 + 2 * kernel_clusters);
    let used = 4 + 2 * kernel_clusters + 2;

    // The volume label leads the root directory.
    let root_raw = read(&map, r.data_offset, 32);
    assert_eq!(&root_raw[..11], b"MNGN_BOOT  ");
    assert_eq!(root_raw[11], 0x08);

    // FSInfo counts exactly the free clusters and points at the first.
    let fsinfo = read(&map, 512, 512);
    assert_eq!(u32_at(&fsinfo, 0), 0x4161_5252);
    assert_eq!(u32_at(&fsinfo, 488), r.clusters - used);
    assert_eq!(u32_at(&fsinfo, 492), used + 2);
    assert_eq!(r.fat(used + 1), 0x0FFF_FFF8);
    assert_eq!(r.fat(used + 2), 0);
    // Both FATs are identical.
    let fat_len = 2017 * 512;
    assert_eq!(
        read(&map, r.fat_offset, fat_len),
        read(&map, r.fat_offset + fat_len as u64, fat_len)
    );

    let tree = r.tree();
    assert_eq!(
        tree.get("/EFI/BOOT/BOOTx64.EFI"),
        Some(&Found::File(kernel.clone()))
    );
    assert_eq!(
        tree.get("/EFI/metropolis/boot-a.efi"),
        Some(&Found::File(kernel))
    );
    assert_eq!(
        tree.get("/metropolis/parameters.pb"),
        Some(&Found::File(b"params".to_vec()))
    );
    assert_eq!(tree.len(), 7);
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let build = || {
        let mut b = Fat32Builder::new(40 * MIB, "X").unwrap();
        for i in 0..50 {
            b.add_file(
                &format!("d{}/a long file name {i}.txt", i % 3),
                Content::bytes(pattern(i * 100, i as u8)),
            )
            .unwrap();
        }
        map_of(40 * MIB, b.build(1).unwrap())
    };
    let (a, b) = (build(), build());
    assert_eq!(
        read(&a, 0, (40 * MIB) as usize),
        read(&b, 0, (40 * MIB) as usize)
    );
}

#[test]
fn empty_file_system_and_empty_label() {
    let size = geometry::size_limits().0;
    let extents = Fat32Builder::new(size, "").unwrap().build(0).unwrap();
    let map = map_of(size, extents);
    let (r, bs) = Reader::new(&map);
    assert_eq!(&bs[71..82], b"NO NAME    ");
    assert!(r.tree().is_empty());
    assert_eq!(r.chain(2), vec![2]);
    assert_eq!(read(&map, r.data_offset, 512), vec![0; 512]);
}

#[test]
fn large_directories_span_clusters() {
    let mut b = Fat32Builder::new(ESP, "BIG").unwrap();
    for i in 0..300 {
        b.add_file(
            &format!("many/file number {i:04}.dat"),
            Content::bytes(vec![i as u8; i % 3]),
        )
        .unwrap();
    }
    let map = map_of(ESP, b.build(9).unwrap());
    let (r, _) = Reader::new(&map);
    let tree = r.tree();
    assert_eq!(tree.len(), 301);
    assert_eq!(
        tree.get("/many/file number 0299.dat"),
        Some(&Found::File(vec![43; 2]))
    );
    let many = r.dir(2)[0].3;
    // 2 dot entries + 300 × (2 long-name entries + 1) = 902 entries.
    assert_eq!(r.chain(many).len(), (902usize * 32).div_ceil(512));
}

#[test]
fn names_match_case_insensitively() {
    let mut b = Fat32Builder::new(ESP, "L").unwrap();
    b.add_file("EFI/BOOT/a", Content::bytes(vec![1])).unwrap();
    b.add_file("efi/boot/b", Content::bytes(vec![2])).unwrap();
    b.add_dir("Efi/Boot").unwrap();
    b.add_dir("/efi").unwrap();
    let err = b
        .add_file("EFI/BOOT/A", Content::bytes(vec![3]))
        .unwrap_err();
    assert!(
        matches!(&err, Fat32Error::Duplicate { existing, .. } if existing == "/EFI/BOOT/a"),
        "{err}"
    );
    let map = map_of(ESP, b.build(0).unwrap());
    let tree = Reader::new(&map).0.tree();
    let paths: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(paths, ["/EFI", "/EFI/BOOT", "/EFI/BOOT/a", "/EFI/BOOT/b"]);
}

#[test]
fn bad_sizes_and_labels() {
    let (min, max) = geometry::size_limits();
    assert!(matches!(
        Fat32Builder::new(ESP + 1, "A"),
        Err(Fat32Error::SizeNotSectors { .. })
    ));
    let err = Fat32Builder::new(min - 512, "A").unwrap_err();
    assert!(matches!(err, Fat32Error::SizeOutOfRange { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("65525") && msg.contains(&min.to_string()),
        "{msg}"
    );
    assert!(matches!(
        Fat32Builder::new(0, "A"),
        Err(Fat32Error::SizeOutOfRange { clusters: 0, .. })
    ));
    assert!(matches!(
        Fat32Builder::new(max + 512, "A"),
        Err(Fat32Error::SizeOutOfRange { .. })
    ));
    assert!(matches!(
        Fat32Builder::new(u64::MAX - 511, "A"),
        Err(Fat32Error::SizeOutOfRange { .. })
    ));
    let err = Fat32Builder::new(ESP, "MNGN_BOOT_TOO").unwrap_err();
    assert!(
        err.to_string()
            .contains("\"MNGN_BOOT_TOO\" is 13 bytes long"),
        "{err}"
    );
    assert!(matches!(
        Fat32Builder::new(ESP, "boot"),
        Err(Fat32Error::Label { .. })
    ));
    assert!(matches!(
        Fat32Builder::new(ESP, "A/B"),
        Err(Fat32Error::Label { .. })
    ));
}

#[test]
fn bad_paths() {
    let mut b = Fat32Builder::new(ESP, "A").unwrap();
    let one = || Content::bytes(vec![1]);
    assert!(matches!(b.add_file("", one()), Err(Fat32Error::EmptyPath)));
    assert!(matches!(b.add_dir("/"), Err(Fat32Error::EmptyPath)));
    for path in ["a//b", "a/", "//a"] {
        assert!(
            matches!(
                b.add_file(path, one()),
                Err(Fat32Error::EmptyComponent { .. })
            ),
            "{path}"
        );
    }
    let err = b.add_file("dir/na:me", one()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "path \"dir/na:me\": name \"na:me\" contains ':', which FAT names cannot hold (no control characters or any of \"*/:<>?\\|)"
    );
    for path in ["a/./b", "a/../b", "a/b.", "a/ b", "a\\b"] {
        assert!(
            matches!(b.add_dir(path), Err(Fat32Error::BadName { .. })),
            "{path}"
        );
    }
    assert!(matches!(
        b.add_file(&"x".repeat(256), one()),
        Err(Fat32Error::BadName {
            problem: NameProblem::TooLong(256),
            ..
        })
    ));
    b.add_file("f", one()).unwrap();
    let err = b.add_file("f/g", one()).unwrap_err();
    assert!(
        matches!(&err, Fat32Error::UnderFile { file, .. } if file == "/f"),
        "{err}"
    );
    assert!(matches!(
        b.add_dir("F/g/h"),
        Err(Fat32Error::UnderFile { .. })
    ));
    assert!(matches!(b.add_dir("F"), Err(Fat32Error::Duplicate { .. })));
    b.add_dir("d").unwrap();
    assert!(matches!(
        b.add_file("D", one()),
        Err(Fat32Error::Duplicate { .. })
    ));
    // Nothing of a failed add stays behind.
    assert!(b.add_file("new/sub/bad|name", one()).is_err());
    let map = map_of(ESP, b.build(0).unwrap());
    let tree = Reader::new(&map).0.tree();
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["/d", "/f"]);
}

#[test]
fn bad_contents() {
    let mut b = Fat32Builder::new(ESP, "A").unwrap();
    let err = b.add_file("huge", Content::zeros(1 << 32)).unwrap_err();
    assert!(
        matches!(
            err,
            Fat32Error::FileTooLarge {
                len: 4294967296,
                ..
            }
        ),
        "{err}"
    );
    b.add_file("max", Content::zeros(u64::from(u32::MAX)))
        .unwrap();

    let short = Content {
        source: Source::Bytes {
            data: vec![1u8; 10].into(),
            offset: 4,
            inline: true,
        },
        len: 7,
    };
    let err = b.add_file("short", short).unwrap_err();
    assert!(
        err.to_string()
            .contains("reach past the end of inline bytes (10 bytes)"),
        "{err}"
    );

    let (f, file) = blob(&[5; 100], 0);
    let past = Content {
        source: Source::File {
            file,
            offset: u64::MAX,
        },
        len: 2,
    };
    let err = b.add_file("past", past).unwrap_err();
    assert!(
        err.to_string().contains(&f.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn too_small_for_the_files() {
    let size = geometry::size_limits().0;
    let mut b = Fat32Builder::new(size, "A").unwrap();
    b.add_file("a/small", Content::zeros(1000)).unwrap();
    b.add_file("a/big", Content::zeros(size)).unwrap();
    b.add_file("b/other", Content::zeros(1)).unwrap();
    let err = b.build(0).unwrap_err();
    assert!(
        matches!(&err, Fat32Error::NoSpace { path, needed, .. } if path == "/a/big" && *needed == 4 + size / 512),
        "{err}"
    );

    // Exactly full is fine, and FSInfo says no cluster is free.
    let clusters = Geometry::for_sectors(size / 512).unwrap().clusters as u64;
    let mut b = Fat32Builder::new(size, "A").unwrap();
    b.add_file("fill", Content::zeros((clusters - 1) * 512))
        .unwrap();
    let map = map_of(size, b.build(0).unwrap());
    let fsinfo = read(&map, 512, 512);
    assert_eq!(u32_at(&fsinfo, 488), 0);
    assert_eq!(u32_at(&fsinfo, 492), u32::MAX);
    let mut b = Fat32Builder::new(size, "A").unwrap();
    b.add_file("fill", Content::zeros((clusters - 1) * 512 + 1))
        .unwrap();
    assert!(matches!(b.build(0), Err(Fat32Error::NoSpace { .. })));
}

#[test]
fn directory_size_limit() {
    let mut b = Fat32Builder::new(ESP, "A").unwrap();
    // 13-unit names take 1 long-name entry + 1 short: 32767 fit with the
    // label, 32768 do not.
    for i in 0..32768 {
        b.add_file(&format!("name{i:09}"), Content::zeros(0))
            .unwrap();
    }
    let err = b.build(0).unwrap_err();
    assert!(
        matches!(err, Fat32Error::DirectoryTooLarge { entries: 65537, .. }),
        "{err}"
    );
}

#[test]
fn deep_trees_do_not_overflow_the_stack() {
    let mut b = Fat32Builder::new(ESP, "A").unwrap();
    let path = vec!["d"; 20000].join("/");
    b.add_file(&format!("{path}/leaf"), Content::bytes(vec![9]))
        .unwrap();
    let extents = b.build(0).unwrap();
    assert_covers(&extents, ESP);
}

/// A path made of names from a small pool, so that collisions, parents and
/// files-in-the-way all happen.
fn path_strategy() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("a".to_owned()),
        Just("A".to_owned()),
        Just("EFI".to_owned()),
        Just("boot".to_owned()),
        "[a-z]{1,3}",
        "[a-zA-Z0-9 ._~+é-]{1,20}",
        "\\PC{1,5}",
    ];
    prop::collection::vec(name, 1..5).prop_map(|v| v.join("/"))
}

proptest! {
    /// Whatever is asked, the builder answers with a value or an error.
    #[test]
    fn never_panics(
        size in prop_oneof![Just(ESP), Just(geometry::size_limits().0), any::<u64>()],
        label in "\\PC{0,13}",
        ops in prop::collection::vec((any::<bool>(), "\\PC{0,30}", 0u64..2000), 0..20),
    ) {
        let Ok(mut b) = Fat32Builder::new(size, &label) else { return Ok(()); };
        for (dir, path, len) in ops {
            let _ = if dir {
                b.add_dir(&path)
            } else {
                b.add_file(&path, Content::bytes(vec![1u8; len as usize]))
            };
        }
        if let Ok(extents) = b.build(7) {
            assert_covers(&extents, size);
        }
    }

    /// Built trees read back as added: every file with its bytes, every
    /// directory, nothing else (paths compared as FAT does, ignoring case).
    #[test]
    fn trees_read_back(
        ops in prop::collection::vec((any::<bool>(), path_strategy(), 0usize..1500, any::<u8>()), 1..30),
    ) {
        let mut b = Fat32Builder::new(geometry::size_limits().0, "T").unwrap();
        let mut want: BTreeMap<String, Found> = BTreeMap::new();
        for (dir, path, len, seed) in ops {
            let ok = if dir {
                b.add_dir(&path).is_ok()
            } else {
                b.add_file(&path, Content::bytes(pattern(len, seed))).is_ok()
            };
            if !ok {
                continue;
            }
            let path = path.strip_prefix('/').unwrap_or(&path);
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                want.insert(names::fold(&format!("/{}", parts[..i].join("/"))), Found::Dir);
            }
            let found = if dir { Found::Dir } else { Found::File(pattern(len, seed)) };
            want.insert(names::fold(&format!("/{path}")), found);
        }
        let map = map_of(b.size(), b.build(0).unwrap());
        let got: BTreeMap<String, Found> = Reader::new(&map)
            .0
            .tree()
            .into_iter()
            .map(|(k, v)| (names::fold(&k), v))
            .collect();
        prop_assert_eq!(got, want);
    }
}

/// Prints how long building Monogon's ESP takes and how much it generates
/// (`cargo test -p layout --release fat32_build_cost -- --ignored --nocapture`).
#[test]
#[ignore = "measurement, not a check"]
fn fat32_build_cost() {
    let kernel = Content::zeros(40 * MIB);
    let mut times = Vec::new();
    let mut generated = 0;
    for _ in 0..21 {
        let t = std::time::Instant::now();
        let mut b = Fat32Builder::new(ESP, "MNGN_BOOT").unwrap();
        b.add_file("EFI/BOOT/BOOTx64.EFI", Content::zeros(2 * MIB))
            .unwrap();
        b.add_file("EFI/metropolis/boot-a.efi", kernel.clone())
            .unwrap();
        b.add_file("metropolis/parameters.pb", Content::bytes(vec![1; 300]))
            .unwrap();
        let extents = b.build(1).unwrap();
        times.push(t.elapsed());
        let mut buffers: Vec<Arc<[u8]>> = Vec::new();
        for e in &extents {
            if let Source::Bytes { data, .. } = &e.source {
                if !buffers.iter().any(|b| Arc::ptr_eq(b, data)) {
                    buffers.push(data.clone());
                }
            }
        }
        generated = buffers.iter().map(|b| b.len()).sum::<usize>();
    }
    times.sort();
    println!(
        "128 MiB ESP, 2 MiB loader + 40 MiB kernel: build median {:?} (min {:?}, max {:?}), {} bytes generated",
        times[10], times[0], times[20], generated
    );
}
