//! Reading an overlay file's header and map back, checking them, and
//! finding its shadow map: what every open does before the first request.

use super::PageSlots;
use crate::error::OverlayError;
use crate::error::{corrupt, io_err};
use crate::format::{self, Geometry, RawHeader, SlotError, SLOT_SIZE, VERSION, WORDS_PER_PAGE};
use crate::map::Map;
use crate::shadow::{self, Binding, Found, Shadow, ShadowStatus};
use crate::storage::Storage;
use blockio::{IoBuf, IoBufMut};
use std::io;
use std::path::Path;

/// Reads and checks the header; returns it and the slot it came from.
pub(super) fn load_header(
    storage: &dyn Storage,
    path: &Path,
) -> Result<(RawHeader, usize), OverlayError> {
    let len = storage
        .file_len()
        .map_err(io_err(path, "reading the file's length"))?;
    let mut head = vec![0u8; (2 * SLOT_SIZE).min(len) as usize];
    storage
        .read_at(0, &mut [IoBufMut::new(&mut head)])
        .map_err(io_err(path, "reading the header"))?;
    let not_overlay = || OverlayError::NotAnOverlay {
        path: path.to_owned(),
        found: head[..head.len().min(8)].to_vec(),
    };
    if len < 2 * SLOT_SIZE {
        if head.len() >= 8 && head[..8] != format::HEADER_MAGIC {
            return Err(not_overlay());
        }
        return Err(OverlayError::Truncated {
            path: path.to_owned(),
            len,
            expected: 2 * SLOT_SIZE,
        });
    }
    let slots = [
        format::decode_header(&head[..SLOT_SIZE as usize]),
        format::decode_header(&head[SLOT_SIZE as usize..]),
    ];
    // One copy with our magic is enough to call the file ours: copy 0's
    // magic may be what a crash or a bad sector damaged.
    let ours =
        |s: &Result<RawHeader, SlotError>| !matches!(s, Err(SlotError::Magic | SlotError::Empty));
    if !slots.iter().any(ours) {
        return Err(not_overlay());
    }
    for s in &slots {
        if let Err(SlotError::Version(version)) = s {
            return Err(OverlayError::UnsupportedVersion {
                path: path.to_owned(),
                version: *version,
                supported: VERSION,
            });
        }
    }
    let best = match (&slots[0], &slots[1]) {
        (Ok(a), Ok(b)) if b.generation > a.generation => 1,
        (Ok(_), _) => 0,
        (Err(_), Ok(_)) => 1,
        (Err(a), Err(b)) => {
            return Err(corrupt(
                path,
                format!(
                    "header copy 0: {}; header copy 1: {}",
                    describe(a),
                    describe(b)
                ),
            ))
        }
    };
    let [a, b] = slots;
    let raw = if best == 0 { a } else { b };
    raw.map(|r| (r, best))
        .map_err(|e| corrupt(path, describe(&e)))
}

/// Reads and checks every map page; returns the words and each page's slots.
pub(super) fn load_map(
    storage: &dyn Storage,
    path: &Path,
    geo: &Geometry,
) -> Result<(Vec<u64>, Vec<PageSlots>), OverlayError> {
    let mut words = Vec::with_capacity(geo.map_pages as usize * WORDS_PER_PAGE);
    let mut slots = Vec::with_capacity(geo.map_pages as usize);
    let mut buf = vec![0u8; 2 * SLOT_SIZE as usize];
    let mut scratch = [Vec::new(), Vec::new()];
    for page in 0..geo.map_pages {
        storage
            .read_at(geo.slot_offset(page, 0), &mut [IoBufMut::new(&mut buf)])
            .map_err(io_err(path, format!("reading map page {page}")))?;
        let mut found = [Err(SlotError::Empty), Err(SlotError::Empty)];
        for (s, slot) in found.iter_mut().enumerate() {
            scratch[s].clear();
            let bytes = &buf[s * SLOT_SIZE as usize..(s + 1) * SLOT_SIZE as usize];
            *slot = format::decode_page(page, bytes, &mut scratch[s]);
        }
        let chosen = match (&found[0], &found[1]) {
            (Ok(a), Ok(b)) if a == b => {
                return Err(corrupt(
                    path,
                    format!("map page {page}: both copies have sequence number {a}"),
                ))
            }
            (Ok(a), Ok(b)) => usize::from(b > a),
            (Ok(_), Err(_)) => 0,
            (Err(_), Ok(_)) => 1,
            (Err(a), Err(b)) => {
                return Err(corrupt(
                    path,
                    format!(
                        "map page {page}: copy 0: {}; copy 1: {}",
                        describe(a),
                        describe(b)
                    ),
                ))
            }
        };
        // `chosen` is a valid slot.
        let seq = found[chosen].as_ref().copied().unwrap_or_default();
        let first_word = words.len();
        words.extend_from_slice(&scratch[chosen]);
        for (i, &w) in words[first_word..].iter().enumerate() {
            let first_block = (first_word + i) as u64 * 32;
            for j in 0..32u64 {
                let bits = (w >> (2 * j)) & 3;
                let block = first_block + j;
                if bits == 3 {
                    return Err(corrupt(
                        path,
                        format!("map page {page}: block {block} has the invalid state 3"),
                    ));
                }
                if bits != 0 && block >= geo.blocks {
                    return Err(corrupt(
                        path,
                        format!(
                            "map page {page}: block {block} is marked although the disk has {} blocks",
                            geo.blocks
                        ),
                    ));
                }
            }
        }
        slots.push(PageSlots {
            seq,
            next: 1 - chosen,
        });
    }
    Ok((words, slots))
}

/// Refuses a file shorter than its geometry.
pub(super) fn check_len(
    storage: &dyn Storage,
    path: &Path,
    geo: &Geometry,
) -> Result<(), OverlayError> {
    let len = storage
        .file_len()
        .map_err(io_err(path, "reading the file's length"))?;
    if len < geo.file_len() {
        return Err(OverlayError::Truncated {
            path: path.to_owned(),
            len,
            expected: geo.file_len(),
        });
    }
    Ok(())
}

/// Writes a fresh overlay with header `raw` (both copies) and an empty map
/// (copy 0 of each page) to `storage`, and syncs it.
pub(super) fn write_pristine(
    storage: &dyn Storage,
    path: &Path,
    raw: &RawHeader,
) -> Result<(), OverlayError> {
    let geo = Geometry::new(raw.disk_size);
    let header = format::encode_header(raw);
    let write = |offset: u64, bytes: &[u8]| storage.write_at(offset, &mut [IoBuf::new(bytes)]);
    let result = (|| {
        storage.set_len(geo.file_len())?;
        write(0, &header)?;
        write(SLOT_SIZE, &header)?;
        let mut slot = vec![0u8; SLOT_SIZE as usize];
        let empty = vec![0u64; WORDS_PER_PAGE];
        for page in 0..geo.map_pages {
            format::encode_page(page, 1, &empty, &mut slot);
            write(geo.slot_offset(page, 0), &slot)?;
        }
        storage.sync_data()
    })();
    result.map_err(io_err(path, "writing the new overlay"))
}

/// What a shadow map of the overlay in `storage` must match.
pub(super) fn bind(
    storage: &dyn Storage,
    path: &Path,
    raw: &RawHeader,
    geo: &Geometry,
) -> Result<Binding, OverlayError> {
    let file = storage
        .file_id()
        .map_err(io_err(path, "reading the file's status"))?
        .ok_or_else(|| OverlayError::InvalidOptions {
            path: path.to_owned(),
            reason: "a shadow map needs the overlay in a host file".into(),
        })?;
    let boot_id = shadow::boot_id().map_err(|why| OverlayError::Io {
        path: path.to_owned(),
        what: "binding the shadow map to this boot".into(),
        source: io::Error::other(why),
    })?;
    Ok(Binding {
        disk_id: raw.disk_id,
        file,
        generation: raw.generation,
        pages: geo.map_pages,
        blocks: geo.blocks,
        boot_id,
    })
}

/// The map, from the shadow map in `dir` if it matches, else from the
/// file's `words` (and, for a writer, a new shadow map holding them).
pub(super) fn map_from_shadow(
    dir: &Path,
    binding: &Binding,
    words: Vec<u64>,
    seqs: &[u64],
    read_only: bool,
    path: &Path,
) -> Result<(Map, Option<Shadow>, ShadowStatus), OverlayError> {
    let changed = |a: &[u64], b: &[u64]| {
        a.chunks(WORDS_PER_PAGE)
            .zip(b.chunks(WORDS_PER_PAGE))
            .filter(|(x, y)| x != y)
            .count() as u64
    };
    let (map, shadow, status) = if read_only {
        let (found, spath, why) = shadow::read(dir, binding, seqs);
        let status = match (&found, why) {
            (_, Some(reason)) => ShadowStatus::Rejected {
                path: spath,
                reason,
            },
            (Some(adopted), None) => ShadowStatus::Adopted {
                path: spath,
                changed_pages: changed(adopted, &words),
            },
            (None, None) => ShadowStatus::Fresh { path: spath },
        };
        (Map::from_words(found.unwrap_or(words)), None, status)
    } else {
        let (shadow, found) =
            Shadow::open(dir, binding, &words, seqs).map_err(|(what, source)| {
                OverlayError::Io {
                    path: path.to_owned(),
                    what,
                    source,
                }
            })?;
        let (mapping, first, len) = shadow.map_words();
        let map = Map::from_mapping(mapping, first, len);
        let spath = shadow.path().to_owned();
        let status = match found {
            Found::Nothing => ShadowStatus::Fresh { path: spath },
            Found::Adopted => ShadowStatus::Adopted {
                path: spath,
                // Pages the file's map lacks states of: the next flush
                // writes them. The others are in the file's page cache
                // already, and its first sync makes them durable.
                changed_pages: map.mark_differing(&words),
            },
            Found::Rejected(reason) => ShadowStatus::Rejected {
                path: spath,
                reason,
            },
        };
        (map, Some(shadow), status)
    };
    match &status {
        ShadowStatus::Rejected { reason, .. } => {
            tracing::warn!(overlay = %path.display(), "{reason}; not used")
        }
        ShadowStatus::Adopted {
            path: spath,
            changed_pages,
        } if *changed_pages > 0 => tracing::info!(
            overlay = %path.display(),
            shadow = %spath.display(),
            changed_pages,
            "took the unflushed states of a process that died from its shadow map"
        ),
        _ => {}
    }
    Ok((map, shadow, status))
}

/// Why a header or map slot was refused, in words.
fn describe(e: &SlotError) -> String {
    match e {
        SlotError::Empty => "never written".into(),
        SlotError::Magic => "wrong magic".into(),
        SlotError::Version(v) => format!("version {v}"),
        SlotError::Bad(why) => why.clone(),
    }
}
