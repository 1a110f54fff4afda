//! Directory entries: the 32-byte short entries and the long-name entries
//! that precede them.

use super::names::{lfn_checksum, ShortName};

/// Bytes per directory entry.
pub const ENTRY: usize = 32;
/// The most entries a FAT directory may hold (2 MiB).
pub const MAX_ENTRIES: u64 = 65536;
/// UTF-16 code units per long-name entry.
const UNITS_PER_LFN: usize = 13;

/// Attribute: a volume label.
const ATTR_VOLUME_ID: u8 = 0x08;
/// Attribute: a directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Attribute: a regular file with no flags (Monogon's installer sets none).
pub const ATTR_FILE: u8 = 0x00;
/// Attribute of a long-name entry (read-only, hidden, system, volume).
const ATTR_LFN: u8 = 0x0F;
/// Marks the last (first stored) long-name entry of a name.
const LFN_LAST: u8 = 0x40;

/// The fixed time stamp of every entry: 1980-01-01 00:00:00, the FAT epoch,
/// so that the same inputs give the same bytes.
const DATE: u16 = (1 << 5) | 1;
const TIME: u16 = 0;

/// The number of long-name entries for a name of `units` UTF-16 code units:
/// the name, NUL terminated unless it fills its last entry exactly.
pub fn lfn_entries(units: usize) -> usize {
    units.div_ceil(UNITS_PER_LFN)
}

/// Appends the volume label entry that leads the root directory.
pub fn push_label(dir: &mut Vec<u8>, label: &ShortName) {
    let mut e = [0u8; ENTRY];
    e[0..11].copy_from_slice(label);
    e[11] = ATTR_VOLUME_ID;
    e[22..24].copy_from_slice(&TIME.to_le_bytes());
    e[24..26].copy_from_slice(&DATE.to_le_bytes());
    dir.extend_from_slice(&e);
}

/// Appends the `.` and `..` entries of a subdirectory. `parent` is 0 when
/// the parent is the root directory, as the specification requires.
pub fn push_dots(dir: &mut Vec<u8>, own: u32, parent: u32) {
    dir.extend_from_slice(&short_entry(b".          ", ATTR_DIRECTORY, own, 0));
    dir.extend_from_slice(&short_entry(b"..         ", ATTR_DIRECTORY, parent, 0));
}

/// Appends the long-name entries and the short entry of a named file or
/// directory. `name` has at most 255 UTF-16 code units (checked on entry).
pub fn push_named(
    dir: &mut Vec<u8>,
    name: &str,
    short: &ShortName,
    attr: u8,
    cluster: u32,
    size: u32,
) {
    let units: Vec<u16> = name.encode_utf16().collect();
    let count = lfn_entries(units.len());
    let checksum = lfn_checksum(short);
    // Stored last piece first; sequence numbers count from 1 at the end.
    for seq in (1..=count).rev() {
        let mut piece = [0xFFFFu16; UNITS_PER_LFN];
        let from = (seq - 1) * UNITS_PER_LFN;
        let part = units.get(from..).unwrap_or_default();
        let n = part.len().min(UNITS_PER_LFN);
        piece[..n].copy_from_slice(&part[..n]);
        if n < UNITS_PER_LFN {
            piece[n] = 0;
        }
        let mut e = [0u8; ENTRY];
        // count ≤ 20, so the sequence number fits a byte.
        e[0] = seq as u8 | if seq == count { LFN_LAST } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = checksum;
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (at, unit) in slots.zip(piece) {
            e[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        dir.extend_from_slice(&e);
    }
    dir.extend_from_slice(&short_entry(short, attr, cluster, size));
}

fn short_entry(short: &ShortName, attr: u8, cluster: u32, size: u32) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[0..11].copy_from_slice(short);
    e[11] = attr;
    e[14..16].copy_from_slice(&TIME.to_le_bytes()); // created
    e[16..18].copy_from_slice(&DATE.to_le_bytes());
    e[18..20].copy_from_slice(&DATE.to_le_bytes()); // last accessed
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&TIME.to_le_bytes()); // written
    e[24..26].copy_from_slice(&DATE.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units_of(entry: &[u8]) -> Vec<u16> {
        (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2))
            .map(|at| u16::from_le_bytes([entry[at], entry[at + 1]]))
            .collect()
    }

    #[test]
    fn long_name_spans_entries_last_first() {
        let mut dir = Vec::new();
        let short = *b"ALONGN~1TXT";
        push_named(&mut dir, "a long name.txt", &short, ATTR_FILE, 5, 1234);
        assert_eq!(dir.len(), 3 * ENTRY);
        assert_eq!(dir[0], 0x42);
        assert_eq!(dir[ENTRY], 0x01);
        for e in dir.chunks(ENTRY).take(2) {
            assert_eq!(e[11], ATTR_LFN);
            assert_eq!(e[13], lfn_checksum(&short));
        }
        let mut name = units_of(&dir[ENTRY..]);
        name.extend(units_of(&dir[..ENTRY]));
        let want: Vec<u16> = "a long name.txt".encode_utf16().collect();
        assert_eq!(&name[..15], &want[..]);
        assert_eq!(name[15], 0);
        assert!(name[16..].iter().all(|&u| u == 0xFFFF));
        let s = &dir[2 * ENTRY..];
        assert_eq!(&s[..11], &short);
        assert_eq!(u16::from_le_bytes([s[26], s[27]]), 5);
        assert_eq!(u32::from_le_bytes([s[28], s[29], s[30], s[31]]), 1234);
    }

    #[test]
    fn exact_fit_has_no_terminator() {
        let mut dir = Vec::new();
        push_named(&mut dir, "abcdefghijklm", b"ABCDEF~1   ", ATTR_FILE, 0, 0);
        assert_eq!(dir.len(), 2 * ENTRY);
        assert!(units_of(&dir).iter().all(|&u| u != 0 && u != 0xFFFF));
        assert_eq!(lfn_entries(255), 20);
    }

    #[test]
    fn high_cluster_bits_go_to_their_own_field() {
        let mut dir = Vec::new();
        push_dots(&mut dir, 0x0012_3456, 0);
        assert_eq!(&dir[20..22], &[0x12, 0x00]);
        assert_eq!(&dir[26..28], &[0x56, 0x34]);
        assert_eq!(&dir[ENTRY..ENTRY + 2], b"..");
        assert_eq!(dir[ENTRY + 11], ATTR_DIRECTORY);
    }
}
