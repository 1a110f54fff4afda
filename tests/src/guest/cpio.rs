//! A writer for the `newc` cpio format, the format of Linux initramfs archives.
//!
//! Each entry is a 110-byte ASCII header (magic `070701` and thirteen 8-digit
//! hex fields), the NUL-terminated name padded to 4 bytes, then the data padded
//! to 4 bytes; a `TRAILER!!!` entry ends the archive.

use std::collections::BTreeSet;

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds a newc cpio archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
    /// Directories already written, so parents are created once and first.
    dirs: BTreeSet<String>,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        CpioWriter {
            out: Vec::new(),
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its missing parents), mode 0755.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755), creating parents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = self.parents(path);
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
    }

    /// Adds a symbolic link `path` → `target`, creating parents.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.parents(path);
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// Adds a character device node, creating parents.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = self.parents(path);
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn parents(&mut self, path: &str) -> String {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path.to_string()
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check (unused by newc)
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The archive is checked by the real `cpio` tool, not by re-reading our own format.
    #[test]
    fn cpio_tool_lists_and_extracts_what_was_written() {
        let mut w = CpioWriter::new();
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        w.symlink("bin/sh", "busybox");
        w.char_dev("dev/console", 0o600, 5, 1);
        w.dir("proc");
        w.file("empty", 0o644, b"");
        let archive = w.finish();
        assert_eq!(archive.len() % 4, 0);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).unwrap();
        let out = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&path)
            .stderr(Stdio::null())
            .output()
            .expect("cpio (installed by .ci/install-deps)");
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "bin/hello",
            "bin/sh -> busybox",
            "dev/console",
            "proc",
            "empty",
        ] {
            assert!(list.contains(want), "{want} missing from:\n{list}");
        }
        assert!(
            list.lines()
                .any(|l| l.starts_with("crw-------") && l.contains("5,")),
            "{list}"
        );

        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("cpio")
            .args(["-id", "--no-absolute-filenames", "--quiet", "-F"])
            .arg(&path)
            .current_dir(&x)
            .status()
            .unwrap();
        // Extracting dev/console needs root; only compare the regular file.
        let _ = st;
        assert_eq!(
            std::fs::read(x.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }
}
