//! The on-disk format: constants, the header and map page slots.
//!
//! `FORMAT.md` describes every field; this module is the only code that
//! knows byte positions. Decoding never trusts a field before checking it.
//!
//! Fields are read and written by offset with `from_le_bytes`/`to_le_bytes`,
//! not through zerocopy structs: the code has no `unsafe` to remove, the
//! offsets read side by side with `FORMAT.md`, and every field needs a
//! check after decoding anyway (checksums, versions, ranges), which a
//! byte-layout derive does not give.

use blockio::BaseIdentity;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The first bytes of a header slot.
pub const HEADER_MAGIC: [u8; 8] = *b"OCIDOVLY";
/// The first bytes of a map page slot.
pub const MAP_MAGIC: [u8; 8] = *b"OCIDOVLM";
/// The format version this code writes and the only one it reads.
pub const VERSION: u32 = 1;
/// Size of a header slot and of a map page slot.
pub const SLOT_SIZE: u64 = 4096;
/// Bytes of a block: the granularity of copy-up and of the map.
pub const BLOCK_SIZE: u64 = 4096;
/// Where the map's slots start (after two header slots).
pub const MAP_OFFSET: u64 = 2 * SLOT_SIZE;
/// Bytes of block states in a map page slot.
pub const PAGE_PAYLOAD: usize = 4032;
/// Offset of the payload in a map page slot.
const PAGE_PAYLOAD_OFFSET: usize = SLOT_SIZE as usize - PAGE_PAYLOAD;
/// Blocks described by one map page (2 bits each).
pub const BLOCKS_PER_PAGE: u64 = PAGE_PAYLOAD as u64 * 4;
/// 64-bit words of block states in one map page.
pub const WORDS_PER_PAGE: usize = PAGE_PAYLOAD / 8;
/// The data area starts on a multiple of this.
pub const DATA_ALIGN: u64 = 1 << 20;
/// The longest manifest digest a header holds.
pub const MAX_DIGEST_LEN: usize = 255;
/// The largest disk an overlay describes (its map lives in memory: 64 MiB
/// of map per TiB of disk).
pub const MAX_DISK_SIZE: u64 = 16 << 40;
/// Disk sizes are whole sectors.
pub const SECTOR: u64 = 512;

/// Where the header's checksum lives; it covers every byte before it.
const HEADER_CHECKSUM: usize = SLOT_SIZE as usize - 32;

/// The state of one block, two bits in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockState {
    /// Not written: reads come from the base.
    Base = 0,
    /// Written: the block's data is in the overlay's data area.
    Written = 1,
    /// Zeroed (write-zeroes or discard): reads return zeros, nothing stored.
    Zero = 2,
}

impl BlockState {
    /// Decodes two bits; `3` is not a state.
    pub fn from_bits(bits: u64) -> Option<BlockState> {
        match bits {
            0 => Some(BlockState::Base),
            1 => Some(BlockState::Written),
            2 => Some(BlockState::Zero),
            _ => None,
        }
    }
}

/// The geometry every other field follows from: where the map and the data
/// live for a disk of `disk_size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of the virtual disk.
    pub disk_size: u64,
    /// Blocks of the disk (the last one may be partial).
    pub blocks: u64,
    /// Map pages.
    pub map_pages: u64,
    /// Where data block 0 lives.
    pub data_offset: u64,
}

impl Geometry {
    /// The geometry of a disk of `disk_size` bytes (which must be checked to
    /// be a positive multiple of [`SECTOR`] up to [`MAX_DISK_SIZE`]).
    pub fn new(disk_size: u64) -> Geometry {
        let blocks = disk_size.div_ceil(BLOCK_SIZE);
        let map_pages = blocks.div_ceil(BLOCKS_PER_PAGE);
        let map_end = MAP_OFFSET + map_pages * 2 * SLOT_SIZE;
        Geometry {
            disk_size,
            blocks,
            map_pages,
            data_offset: map_end.div_ceil(DATA_ALIGN) * DATA_ALIGN,
        }
    }

    /// The file's length: the data area holds every block at a fixed place.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.blocks * BLOCK_SIZE
    }

    /// Where slot `slot` (0 or 1) of map page `page` lives.
    pub fn slot_offset(&self, page: u64, slot: usize) -> u64 {
        MAP_OFFSET + (page * 2 + slot as u64) * SLOT_SIZE
    }

    /// Why `disk_size` cannot be an overlay's size, if it cannot.
    pub fn check_disk_size(disk_size: u64) -> Result<(), String> {
        if disk_size == 0 || !disk_size.is_multiple_of(SECTOR) || disk_size > MAX_DISK_SIZE {
            return Err(format!(
                "disk size {disk_size} is not a positive multiple of {SECTOR} bytes up to {MAX_DISK_SIZE}"
            ));
        }
        Ok(())
    }
}

/// The decoded contents of a header slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// Which write of the header this is; the higher valid slot wins.
    pub generation: u64,
    /// Bytes of the virtual disk.
    pub disk_size: u64,
    /// Random id made at creation (the base derives GUIDs from it).
    pub disk_id: Uuid,
    /// The base the overlay belongs to.
    pub base: BaseIdentity,
}

/// Why a slot could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotError {
    /// All zeros: never written (a hole in a sparse file).
    Empty,
    /// Not this format's magic.
    Magic,
    /// Our magic, a version this code does not read.
    Version(u32),
    /// Structurally wrong (checksum or a field), with a description.
    Bad(String),
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// Encodes a header slot. The digest must be at most [`MAX_DIGEST_LEN`]
/// bytes (checked by the caller).
pub fn encode_header(h: &RawHeader) -> Vec<u8> {
    let g = Geometry::new(h.disk_size);
    let mut b = vec![0u8; SLOT_SIZE as usize];
    put(&mut b, 0, &HEADER_MAGIC);
    put(&mut b, 8, &VERSION.to_le_bytes());
    put(&mut b, 12, &0u32.to_le_bytes()); // flags
    put(&mut b, 16, &h.generation.to_le_bytes());
    put(&mut b, 24, &h.disk_size.to_le_bytes());
    put(&mut b, 32, &(BLOCK_SIZE as u32).to_le_bytes());
    put(&mut b, 36, &(BLOCKS_PER_PAGE as u32).to_le_bytes());
    put(&mut b, 40, &MAP_OFFSET.to_le_bytes());
    put(&mut b, 48, &(g.map_pages as u32).to_le_bytes());
    put(&mut b, 56, &g.data_offset.to_le_bytes());
    put(&mut b, 64, h.disk_id.as_bytes());
    put(&mut b, 80, &h.base.layout_hash);
    let digest = h.base.manifest_digest.as_bytes();
    put(&mut b, 112, &(digest.len() as u16).to_le_bytes());
    put(&mut b, 114, digest);
    let sum = sha256(&[&b[..HEADER_CHECKSUM]]);
    put(&mut b, HEADER_CHECKSUM, &sum);
    b
}

/// Decodes and checks a header slot of [`SLOT_SIZE`] bytes.
pub fn decode_header(b: &[u8]) -> Result<RawHeader, SlotError> {
    if b.len() != SLOT_SIZE as usize {
        return Err(SlotError::Bad("short header slot".into()));
    }
    if b.iter().all(|&x| x == 0) {
        return Err(SlotError::Empty);
    }
    if b[..8] != HEADER_MAGIC {
        return Err(SlotError::Magic);
    }
    // The version comes before the checksum: a newer format may checksum
    // differently, and must be reported as newer, not as corrupt.
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(SlotError::Version(version));
    }
    if sha256(&[&b[..HEADER_CHECKSUM]])[..] != b[HEADER_CHECKSUM..] {
        return Err(SlotError::Bad("header checksum mismatch".into()));
    }
    let bad = |what: String| Err(SlotError::Bad(what));
    let flags = u32_at(b, 12);
    if flags != 0 {
        return bad(format!("unknown header flags {flags:#x}"));
    }
    if u32_at(b, 52) != 0 {
        return bad("reserved header bytes 52..56 are not zero".into());
    }
    let generation = u64_at(b, 16);
    if generation == 0 {
        return bad("header generation 0".into());
    }
    let disk_size = u64_at(b, 24);
    if let Err(e) = Geometry::check_disk_size(disk_size) {
        return bad(e);
    }
    let g = Geometry::new(disk_size);
    let fields = [
        ("granularity", u64::from(u32_at(b, 32)), BLOCK_SIZE),
        (
            "blocks per map page",
            u64::from(u32_at(b, 36)),
            BLOCKS_PER_PAGE,
        ),
        ("map offset", u64_at(b, 40), MAP_OFFSET),
        ("map pages", u64::from(u32_at(b, 48)), g.map_pages),
        ("data offset", u64_at(b, 56), g.data_offset),
    ];
    for (name, found, want) in fields {
        if found != want {
            return bad(format!(
                "header field {name} is {found}, a disk of {disk_size} bytes needs {want}"
            ));
        }
    }
    let digest_len = usize::from(u16::from_le_bytes([b[112], b[113]]));
    if digest_len > MAX_DIGEST_LEN {
        return bad(format!(
            "manifest digest length {digest_len} exceeds {MAX_DIGEST_LEN}"
        ));
    }
    let Ok(digest) = std::str::from_utf8(&b[114..114 + digest_len]) else {
        return bad("manifest digest is not UTF-8".into());
    };
    if b[114 + digest_len..HEADER_CHECKSUM].iter().any(|&x| x != 0) {
        return bad("reserved header bytes are not zero".into());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[64..80]);
    let mut layout_hash = [0u8; 32];
    layout_hash.copy_from_slice(&b[80..112]);
    Ok(RawHeader {
        generation,
        disk_size,
        disk_id: Uuid::from_bytes(id),
        base: BaseIdentity {
            manifest_digest: digest.to_owned(),
            layout_hash,
        },
    })
}

fn page_checksum(b: &[u8]) -> [u8; 32] {
    sha256(&[&b[..24], &[0u8; 32], &b[56..]])
}

/// Encodes map page `page`'s slot with sequence number `seq` and block
/// states `words` ([`WORDS_PER_PAGE`] of them) into `out`.
pub fn encode_page(page: u64, seq: u64, words: &[u64], out: &mut [u8]) {
    out.fill(0);
    put(out, 0, &MAP_MAGIC);
    put(out, 8, &(page as u32).to_le_bytes());
    put(out, 16, &seq.to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        put(out, PAGE_PAYLOAD_OFFSET + i * 8, &w.to_le_bytes());
    }
    let sum = page_checksum(out);
    put(out, 24, &sum);
}

/// Decodes and checks map page `page`'s slot: its sequence number and its
/// block states (appended to `words`).
pub fn decode_page(page: u64, b: &[u8], words: &mut Vec<u64>) -> Result<u64, SlotError> {
    if b.iter().all(|&x| x == 0) {
        return Err(SlotError::Empty);
    }
    if b[..8] != MAP_MAGIC {
        return Err(SlotError::Magic);
    }
    if page_checksum(b)[..] != b[24..56] {
        return Err(SlotError::Bad("checksum mismatch".into()));
    }
    let found = u64::from(u32_at(b, 8));
    if found != page || u32_at(b, 12) != 0 || u64_at(b, 56) != 0 {
        return Err(SlotError::Bad(format!(
            "slot holds page {found} or has nonzero reserved fields"
        )));
    }
    let seq = u64_at(b, 16);
    if seq == 0 {
        return Err(SlotError::Bad("sequence number 0".into()));
    }
    words.extend((0..WORDS_PER_PAGE).map(|i| u64_at(b, PAGE_PAYLOAD_OFFSET + i * 8)));
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RawHeader {
        RawHeader {
            generation: 7,
            disk_size: 5 << 30,
            disk_id: Uuid::from_bytes([9; 16]),
            base: BaseIdentity {
                manifest_digest: "sha256:abc".into(),
                layout_hash: [3; 32],
            },
        }
    }

    #[test]
    fn header_round_trips_and_detects_any_flipped_byte() {
        let h = header();
        let b = encode_header(&h);
        assert_eq!(decode_header(&b), Ok(h));
        for at in [12, 17, 25, 40, 70, 100, 113, 120, 4000, 4095] {
            let mut c = b.clone();
            c[at] ^= 1;
            assert!(
                matches!(decode_header(&c), Err(SlotError::Bad(_))),
                "byte {at}"
            );
        }
        let mut c = b.clone();
        c[8] = 2;
        assert_eq!(decode_header(&c), Err(SlotError::Version(2)));
        c[0] = b'X';
        assert_eq!(decode_header(&c), Err(SlotError::Magic));
        assert_eq!(decode_header(&[0; 4096]), Err(SlotError::Empty));
    }

    /// Re-seals a header after an edit, so only the field check can refuse it.
    fn reseal(b: &mut [u8]) {
        let sum = sha256(&[&b[..HEADER_CHECKSUM]]);
        put(b, HEADER_CHECKSUM, &sum);
    }

    #[test]
    fn header_with_reserved_bytes_or_generation_zero_is_bad() {
        let mut b = encode_header(&header());
        b[52] = 1;
        reseal(&mut b);
        assert!(matches!(decode_header(&b), Err(SlotError::Bad(why)) if why.contains("reserved")));
        let b = encode_header(&RawHeader {
            generation: 0,
            ..header()
        });
        assert!(
            matches!(decode_header(&b), Err(SlotError::Bad(why)) if why.contains("generation"))
        );
    }

    #[test]
    fn page_round_trips_and_detects_corruption() {
        let words: Vec<u64> = (0..WORDS_PER_PAGE as u64).map(|i| i * 0x1111).collect();
        let mut b = vec![0u8; SLOT_SIZE as usize];
        encode_page(3, 42, &words, &mut b);
        let mut out = Vec::new();
        assert_eq!(decode_page(3, &b, &mut out), Ok(42));
        assert_eq!(out, words);
        assert!(matches!(
            decode_page(4, &b, &mut out),
            Err(SlotError::Bad(_))
        ));
        b[2000] ^= 0x40;
        assert!(matches!(
            decode_page(3, &b, &mut out),
            Err(SlotError::Bad(_))
        ));
    }

    #[test]
    fn geometry_of_a_monogon_disk() {
        let g = Geometry::new(5 << 30);
        assert_eq!(g.blocks, 1_310_720);
        assert_eq!(g.map_pages, 82);
        assert_eq!(g.data_offset, 1 << 20);
        assert_eq!(g.file_len(), (1 << 20) + (5 << 30));
    }
}
