//! Random layouts composed from a real image: every read of the block map,
//! and the file the real export path writes, equals a flat image built
//! independently from the layout, the partition table parses back to what
//! was asked (and sgdisk agrees on a few), and FAT32 partitions hold their
//! files.

use blockio::IoBufMut;
use ocidisk_testkit::layout_support;

use anyhow::Result;
use layout::compose::{compose, ComposeError, ComposeOptions};
use layout::oci::{Image, OpenOptions};
use layout::spec::{ContentSpec, LayerRef, LayoutSpec, PartitionSpec, Size, MIB};
use layout_support::*;
use ocidisk_testkit::oci_writer::{BuiltImage, ImageBuilder, OsImage, Payload};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
const PAYLOADS: &[(&str, usize)] = &[
    ("tiny", 1),
    ("odd", 700_001),
    ("big", 2_500_000),
    ("k.efi", 65_536),
];
const HOST_FILES: &[usize] = &[3, 4097, 1_200_000];

struct Fixture {
    dir: tempfile::TempDir,
    built: BuiltImage,
    image: Image,
    host_files: Vec<(PathBuf, Vec<u8>)>,
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn fixture() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let mut os = OsImage::new();
    for (i, (name, len)) in PAYLOADS.iter().enumerate() {
        let p = Payload::new(name, pattern(*len, i as u32));
        os = os.payload(if i == 2 { p.zstd() } else { p });
    }
    let built = ImageBuilder::monogon(os).write(&dir.path().join("image"))?;
    let image = Image::open(
        &built.dir,
        &OpenOptions {
            cache_dir: Some(dir.path().join("cache")),
            ..OpenOptions::default()
        },
    )?;
    let mut host_files = Vec::new();
    for (i, len) in HOST_FILES.iter().enumerate() {
        let path = dir.path().join(format!("host{i}.bin"));
        let data = pattern(*len, 100 + i as u32);
        std::fs::write(&path, &data)?;
        host_files.push((path, data));
    }
    Ok(Fixture {
        dir,
        built,
        image,
        host_files,
    })
}

/// A content, as an abstract choice resolved against the fixture.
#[derive(Clone, Debug)]
enum Pick {
    Empty,
    Payload(usize),
    LayerIndex(usize),
    LayerDigest(usize),
    Host(usize),
    Inline(Vec<u8>),
}

#[derive(Clone, Debug)]
enum PartPick {
    Plain {
        extra: u64,
        content: Pick,
    },
    Fat {
        extra_mib: u64,
        files: Vec<(String, Pick)>,
    },
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        Just(Pick::Empty),
        (0..PAYLOADS.len()).prop_map(Pick::Payload),
        (0..PAYLOADS.len()).prop_map(Pick::LayerIndex),
        (0..PAYLOADS.len()).prop_map(Pick::LayerDigest),
        (0..HOST_FILES.len()).prop_map(Pick::Host),
        prop::collection::vec(any::<u8>(), 0..3000).prop_map(Pick::Inline),
    ]
}

fn part_pick() -> impl Strategy<Value = PartPick> {
    prop_oneof![
        6 => (0u64..3 * MIB, pick()).prop_map(|(extra, content)| PartPick::Plain { extra, content }),
        3 => (0u64..4, prop::collection::vec(("[A-Za-z0-9]{1,10}(/[a-z0-9_]{1,8}(\\.[a-z0-9]{1,3})?){0,2}", pick()), 0..4))
            .prop_map(|(extra_mib, files)| PartPick::Fat { extra_mib, files }),
    ]
}

impl Fixture {
    fn content(&self, pick: &Pick) -> (ContentSpec, Vec<u8>) {
        let layer = |i: usize| self.built.layer(PAYLOADS[i].0);
        match pick {
            Pick::Empty => (ContentSpec::Empty, Vec::new()),
            Pick::Payload(i) => (
                ContentSpec::Payload(PAYLOADS[*i].0.to_owned()),
                layer(*i).data.clone(),
            ),
            Pick::LayerIndex(i) => (
                ContentSpec::Layer(LayerRef::Index(*i)),
                layer(*i).data.clone(),
            ),
            Pick::LayerDigest(i) => (
                ContentSpec::Layer(LayerRef::Digest(layer(*i).blob.digest.clone())),
                layer(*i).data.clone(),
            ),
            Pick::Host(i) => (
                ContentSpec::File(self.host_files[*i].0.clone()),
                self.host_files[*i].1.clone(),
            ),
            Pick::Inline(data) => (ContentSpec::Inline(Arc::from(data.clone())), data.clone()),
        }
    }
}

/// The smallest FAT32 file system with 512-byte clusters (65525 clusters
/// plus metadata), as the FAT32 builder computes it.
const FAT_MIN: u64 = 34_077_184;

/// How composing a case must end.
#[derive(Debug)]
enum Outcome {
    Fits,
    /// The layout itself is refused (placement, inline contents).
    LayoutError,
    /// This 1-based partition's content is larger than the partition.
    TooLarge(usize),
    /// This 1-based FAT32 partition is too small for FAT32.
    FatTooSmall(usize),
}

fn plain_pick(p: &PartPick) -> &Pick {
    match p {
        PartPick::Plain { content, .. } => content,
        PartPick::Fat { .. } => &Pick::Empty,
    }
}

/// What the test expects of one partition.
struct Expect {
    start: u64,
    len: u64,
    data: Option<Vec<u8>>,
    files: Vec<(String, Vec<u8>)>,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn check_case(
    f: &Fixture,
    disk_mib: u64,
    picks: &[PartPick],
    rest: bool,
    reads: &[(u64, usize, usize)],
    tools: bool,
) -> Result<bool, TestCaseError> {
    let fail = |e: anyhow::Error| TestCaseError::fail(format!("{e:#}"));
    let size = disk_mib * MIB;
    let usable_end = size - 33 * 512;
    // Build the spec and, independently, where everything must land.
    let mut partitions = Vec::new();
    let mut expect = Vec::new();
    let mut pos: u64 = 34 * 512;
    let mut placement_fails = false;
    let mut inline_too_large = false;
    let mut content_fails = None;
    for (i, p) in picks.iter().enumerate() {
        let start = pos.next_multiple_of(MIB);
        let last = rest && i == picks.len() - 1;
        let (content, want_len, data, files) = match p {
            PartPick::Plain { extra, content } => {
                let (spec, data) = f.content(content);
                (
                    spec,
                    (data.len() as u64 + extra).max(1),
                    Some(data),
                    Vec::new(),
                )
            }
            PartPick::Fat { extra_mib, files } => {
                let mut spec_files = Vec::new();
                let mut data_files = Vec::new();
                for (path, pick) in files {
                    let lower = path.to_lowercase();
                    let clash = data_files.iter().any(|(p, _): &(String, Vec<u8>)| {
                        let p = p.to_lowercase();
                        p == lower
                            || lower.starts_with(&format!("{p}/"))
                            || p.starts_with(&format!("{lower}/"))
                    });
                    if clash {
                        continue;
                    }
                    let (spec, data) = f.content(pick);
                    spec_files.push((path.clone(), spec));
                    data_files.push((path.clone(), data));
                }
                let spec = ContentSpec::Fat32 {
                    label: "PROP".into(),
                    files: spec_files,
                };
                (spec, (34 + extra_mib) * MIB, None, data_files)
            }
        };
        let (size_spec, len) = if last {
            let len = usable_end.saturating_sub(start) / MIB * MIB;
            (Size::Rest, len)
        } else {
            (Size::Bytes(want_len), want_len.next_multiple_of(512))
        };
        // What must go wrong, in the order compose checks: placement and
        // inline contents (layout validation), then each partition's content.
        if start + len > usable_end || len == 0 {
            placement_fails = true;
        }
        match &data {
            Some(d) if d.len() as u64 > len => {
                if let Pick::Inline(_) = plain_pick(p) {
                    inline_too_large = true;
                }
                content_fails.get_or_insert(Outcome::TooLarge(i + 1));
            }
            None if len < FAT_MIN => {
                content_fails.get_or_insert(Outcome::FatTooSmall(i + 1));
            }
            _ => {}
        }
        let name = format!("part-{i}");
        partitions.push(PartitionSpec {
            name,
            type_guid: if data.is_some() {
                layout::spec::parse_type("linux").map_err(|e| TestCaseError::fail(e.to_string()))?
            } else {
                layout::spec::ESP_TYPE
            },
            size: size_spec,
            content,
        });
        expect.push(Expect {
            start,
            len,
            data,
            files,
        });
        pos = start + len;
    }
    let spec = LayoutSpec {
        disk_size: size,
        partitions,
    };
    let opts = ComposeOptions {
        disk_id: "prop".into(),
    };
    let outcome = if placement_fails || inline_too_large {
        Outcome::LayoutError
    } else {
        content_fails.unwrap_or(Outcome::Fits)
    };
    let disk = match (compose(&f.image, &spec, &opts), outcome) {
        (Ok(disk), Outcome::Fits) => disk,
        (Err(ComposeError::Spec(_)), Outcome::LayoutError) => return Ok(false),
        (Err(ComposeError::ContentTooLarge { index, .. }), Outcome::TooLarge(i)) if index == i => {
            return Ok(false)
        }
        (Err(ComposeError::Fat32 { index, .. }), Outcome::FatTooSmall(i)) if index == i => {
            return Ok(false)
        }
        (Ok(_), outcome) => {
            return Err(TestCaseError::fail(format!(
                "composed, expected {outcome:?}"
            )))
        }
        (Err(e), outcome) => return Err(TestCaseError::fail(format!("{e}, expected {outcome:?}"))),
    };

    // The partition table, parsed here from raw bytes.
    let head = read(&disk.map, 0, 34 * 512).map_err(fail)?;
    prop_assert_eq!(&head[512..520], b"EFI PART");
    for (i, e) in expect.iter().enumerate() {
        let entry = &head[1024 + i * 128..][..128];
        prop_assert_eq!(le64(entry, 32), e.start / 512, "partition {} start", i + 1);
        prop_assert_eq!(
            le64(entry, 40),
            (e.start + e.len) / 512 - 1,
            "partition {} end",
            i + 1
        );
        prop_assert_eq!(disk.partitions[i].size, e.len);
    }
    prop_assert!(head[1024 + expect.len() * 128..].iter().all(|&b| b == 0));

    // The flat reference: zeros, contents where they belong; the GPT areas
    // and FAT32 partitions (checked with tools below) taken from the map.
    let mut flat = vec![0u8; size as usize];
    flat[..34 * 512].copy_from_slice(&head);
    let tail_at = (size - 33 * 512) as usize;
    flat[tail_at..].copy_from_slice(&read(&disk.map, tail_at as u64, 33 * 512).map_err(fail)?);
    for e in &expect {
        let at = e.start as usize;
        match &e.data {
            Some(d) => flat[at..at + d.len()].copy_from_slice(d),
            None => flat[at..at + e.len as usize]
                .copy_from_slice(&read(&disk.map, e.start, e.len).map_err(fail)?),
        }
    }
    // Every byte, in 1 MiB reads...
    let mut buf = vec![0u8; MIB as usize];
    for at in (0..size).step_by(MIB as usize) {
        disk.map.read_at(at, &mut buf).map_err(|e| fail(e.into()))?;
        prop_assert!(
            buf[..] == flat[at as usize..][..MIB as usize],
            "bytes at {}",
            at
        );
    }
    // ...and random scattered reads.
    for &(off, len, pieces) in reads {
        let off = off % size;
        let len = len.min((size - off) as usize);
        let mut out = vec![0xA5u8; len];
        {
            let chunk = len.div_ceil(pieces).max(1);
            let mut iov: Vec<IoBufMut> = out.chunks_mut(chunk).map(IoBufMut::new).collect();
            blockio::ReadAt::read_vectored_at(&disk.map, off, &mut iov)
                .map_err(|e| fail(e.into()))?;
        }
        prop_assert!(
            out[..] == flat[off as usize..][..len],
            "read {}+{}",
            off,
            len
        );
    }

    // The real export path (copy_file_range, holes) on the same layout:
    // byte-identical to the flat image, to the random reads, and every
    // 4 KiB-aligned stretch of a zero extent left a hole.
    let raw_file = tempfile::NamedTempFile::new_in(f.dir.path()).map_err(|e| fail(e.into()))?;
    let raw = raw_file.path().to_owned();
    std::fs::remove_file(&raw).map_err(|e| fail(e.into()))?;
    let exported = export_raw(&disk.map, &raw).map_err(fail)?;
    let written = std::fs::read(&raw).map_err(|e| fail(e.into()))?;
    prop_assert_eq!(written.len() as u64, size);
    if let Some(at) = written.iter().zip(&flat).position(|(a, b)| a != b) {
        return Err(TestCaseError::fail(format!("export differs at byte {at}")));
    }
    for &(off, len, _) in reads {
        let off = off % size;
        let len = len.min((size - off) as usize) as u64;
        let got = read_file(&exported, off, len).map_err(fail)?;
        prop_assert!(
            got[..] == flat[off as usize..][..len as usize],
            "pread {}+{}",
            off,
            len
        );
    }
    for e in disk.map.extents() {
        if !matches!(e.source, layout::Source::Zero) {
            continue;
        }
        let (start, end) = (e.start.next_multiple_of(4096), e.end() / 4096 * 4096);
        if start >= end {
            continue;
        }
        prop_assert!(
            !has_data(&exported, start, end).map_err(fail)?,
            "zero extent {}..{} has data in the export",
            e.start,
            e.end()
        );
        prop_assert_eq!(seek_hole(&exported, start).map_err(fail)?, start);
    }

    if tools {
        sgdisk_verify(&raw).map_err(fail)?;
    }
    for e in expect.iter().filter(|e| e.data.is_none()) {
        let esp = f.dir.path().join("prop-esp.img");
        extract(&raw, e.start, e.len, &esp).map_err(fail)?;
        fsck_fat(&esp).map_err(fail)?;
        for (path, data) in &e.files {
            let got = mcopy(&esp, path, f.dir.path()).map_err(fail)?;
            prop_assert!(&got == data, "FAT file {}", path);
        }
    }
    Ok(true)
}

#[test]
fn random_layouts_read_like_a_flat_image() {
    let f = fixture().expect("fixture");
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let count = AtomicUsize::new(0);
    let composed = AtomicUsize::new(0);
    let strategy = (
        16u64..160,
        prop::collection::vec(part_pick(), 1..6),
        any::<bool>(),
        prop::collection::vec((any::<u64>(), 0usize..300_000, 1usize..5), 1..12),
    );
    runner
        .run(&strategy, |(disk_mib, picks, rest, reads)| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            if check_case(&f, disk_mib, &picks, rest, &reads, n < 4)? {
                composed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let composed = composed.load(Ordering::Relaxed);
    eprintln!(
        "{composed} of {} random layouts composed, the rest were refused as expected",
        count.load(Ordering::Relaxed)
    );
    assert!(
        composed > 0,
        "no random layout composed: the generator is off"
    );
}

#[test]
fn a_known_layout_is_checked_with_the_tools() -> Result<()> {
    // One fixed case through the same checks, so a regression in the
    // checks themselves shows up even when random cases miss it.
    let f = fixture()?;
    let picks = vec![
        PartPick::Fat {
            extra_mib: 0,
            files: vec![
                ("EFI/BOOT/BOOTX64.EFI".into(), Pick::Payload(3)),
                ("params".into(), Pick::Inline(b"node=1".to_vec())),
                ("host/a.bin".into(), Pick::Host(2)),
            ],
        },
        PartPick::Plain {
            extra: 1,
            content: Pick::LayerDigest(2),
        },
        PartPick::Plain {
            extra: 0,
            content: Pick::Host(1),
        },
        PartPick::Plain {
            extra: 5000,
            content: Pick::Empty,
        },
    ];
    let composed = check_case(&f, 64, &picks, true, &[(12345, 99999, 3)], true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(composed, "the known layout composes");
    Ok(())
}
