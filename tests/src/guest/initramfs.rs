//! The guest's initramfs: static busybox, the kernel modules the disk needs,
//! an `/init` that loads them and runs a test script, and a small shell
//! library for the script.
//!
//! The guest reports results on the serial console as lines
//! `OCIDISK key=value`; the init ends with `OCIDISK done=<script status>` and
//! powers the VM off.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::assets::Assets;
use super::cpio::CpioWriter;
use super::error::{io_err, Error, Result};
use super::tool;

/// Modules for a virtio-blk disk with a vfat ESP on Debian's kernel config
/// (built as modules there; the dependencies come from `modules.dep`).
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// Where busybox is looked for when not given.
const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// The init: mounts the pseudo file systems, loads modules in dependency
/// order, runs `/test.sh` with the helpers, reports and powers off. It never
/// returns (a returning init would panic the kernel, which is slower to see).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
failed=
for m in $(cat /etc/ocidisk/modules); do
  insmod "/lib/modules/$m" || failed="$failed $m"
done
[ -z "$failed" ] || echo "OCIDISK insmod_failed=$failed"
echo "OCIDISK boot=ok"
echo "OCIDISK uptime_at_init=$(cut -d' ' -f1 /proc/uptime)"
sh -c '. /lib/ocidisk.sh; set -e; . /test.sh'
st=$?
sync
echo "OCIDISK uptime_at_end=$(cut -d' ' -f1 /proc/uptime)"
echo "OCIDISK done=$st"
poweroff -f
sleep 5
"#;

/// Helpers for test scripts: `report KEY VALUE`, `part_dev NAME`.
const LIBRARY: &str = r#"# Prints one result line the harness collects.
report() { echo "OCIDISK $1=$2"; }

# Prints /dev/<node> of the partition whose GPT name is $1, waiting up to
# 10 s for the kernel to scan the disk; fails if there is none.
part_dev() {
  _i=0
  while [ $_i -lt 100 ]; do
    for _u in /sys/class/block/*/uevent; do
      if grep -qx "PARTNAME=$1" "$_u"; then
        echo "/dev/$(sed -n 's/^DEVNAME=//p' "$_u")"
        return 0
      fi
    done
    usleep 100000
    _i=$((_i + 1))
  done
  echo "part_dev: no partition named $1" >&2
  return 1
}

# Prints /dev/<node> of the first virtio disk, waiting up to 10 s.
disk_dev() {
  _i=0
  while [ $_i -lt 100 ]; do
    [ -b /dev/vda ] && { echo /dev/vda; return 0; }
    usleep 100000
    _i=$((_i + 1))
  done
  echo "disk_dev: no /dev/vda" >&2
  return 1
}
"#;

/// Builds an initramfs (an uncompressed newc cpio, which the kernel accepts as is).
#[derive(Debug, Clone)]
pub struct InitramfsBuilder {
    modules_dir: PathBuf,
    busybox: Option<PathBuf>,
    modules: Vec<String>,
    script: String,
    files: Vec<(String, u32, Vec<u8>)>,
}

impl InitramfsBuilder {
    /// A builder with [`DEFAULT_MODULES`] and an empty test script.
    pub fn new(assets: &Assets) -> Self {
        InitramfsBuilder {
            modules_dir: assets.modules.clone(),
            busybox: None,
            modules: DEFAULT_MODULES.iter().map(|m| m.to_string()).collect(),
            script: String::new(),
            files: Vec::new(),
        }
    }

    /// Also loads module `name` (and its dependencies).
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// The test script: POSIX sh run by busybox with `set -e`, after the
    /// helpers `report KEY VALUE`, `part_dev NAME` and `disk_dev` are defined.
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.to_string();
        self
    }

    /// Adds a file to the archive (e.g. expected data for the script).
    pub fn file(mut self, path: &str, perm: u32, data: Vec<u8>) -> Self {
        self.files.push((path.to_string(), perm, data));
        self
    }

    /// Uses this busybox binary (it must be static) instead of the host's.
    pub fn busybox(mut self, path: &Path) -> Self {
        self.busybox = Some(path.to_path_buf());
        self
    }

    /// Builds the archive.
    pub fn build(&self) -> Result<Vec<u8>> {
        let busybox = match &self.busybox {
            Some(p) => p.clone(),
            None => BUSYBOX_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| Error::AssetsMissing {
                    dir: PathBuf::from("/bin"),
                    missing: "busybox (package busybox-static)".to_string(),
                })?,
        };
        let busybox_bytes =
            std::fs::read(&busybox).map_err(io_err(format!("reading {}", busybox.display())))?;

        let deps = ModulesDep::load(&self.modules_dir)?;
        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let order = deps.load_order(&names)?;

        let mut w = CpioWriter::new();
        for d in ["proc", "sys", "dev", "tmp", "mnt", "run", "etc/ocidisk"] {
            w.dir(d);
        }
        // The kernel opens /dev/console for init before devtmpfs is mounted.
        w.char_dev("dev/console", 0o600, 5, 1);
        w.file("bin/busybox", 0o755, &busybox_bytes);
        w.symlink("bin/sh", "busybox");
        w.file("init", 0o755, INIT.as_bytes());
        w.file("lib/ocidisk.sh", 0o644, LIBRARY.as_bytes());
        w.file("test.sh", 0o644, self.script.as_bytes());

        let mut list = String::new();
        for rel in &order {
            let name = module_file_name(rel);
            let data = read_module(&self.modules_dir.join(rel))?;
            w.file(&format!("lib/modules/{name}"), 0o644, &data);
            list.push_str(&name);
            list.push('\n');
        }
        w.file("etc/ocidisk/modules", 0o644, list.as_bytes());
        for (path, perm, data) in &self.files {
            w.file(path, *perm, data);
        }
        Ok(w.finish())
    }

    /// Builds the archive into `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.build()?;
        std::fs::write(path, bytes).map_err(io_err(format!("writing {}", path.display())))
    }
}

/// The module dependency graph from a modules tree's `modules.dep`.
#[derive(Debug)]
pub struct ModulesDep {
    path: PathBuf,
    /// Module name (with `-` as `_`) → its file, relative to the tree.
    files: BTreeMap<String, String>,
    /// Module file → the files it depends on.
    deps: BTreeMap<String, Vec<String>>,
}

impl ModulesDep {
    /// Reads `<modules_dir>/modules.dep`.
    pub fn load(modules_dir: &Path) -> Result<ModulesDep> {
        let path = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&path)
            .map_err(io_err(format!("reading {}", path.display())))?;
        Ok(ModulesDep::parse(path, &text))
    }

    /// Parses the text of a `modules.dep` (`file: dep dep …` per line).
    pub fn parse(path: PathBuf, text: &str) -> ModulesDep {
        let mut files = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for line in text.lines() {
            let Some((file, rest)) = line.split_once(':') else {
                continue;
            };
            let file = file.trim().to_string();
            files.insert(module_name(&file), file.clone());
            deps.insert(file, rest.split_whitespace().map(str::to_string).collect());
        }
        ModulesDep { path, files, deps }
    }

    /// The module files to load, dependencies first, each once, for `names`.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in names {
            let file =
                self.files
                    .get(&name.replace('-', "_"))
                    .ok_or_else(|| Error::ModuleNotFound {
                        name: name.to_string(),
                        modules_dep: self.path.clone(),
                    })?;
            self.visit(file, &mut done, &mut HashSet::new(), &mut order)?;
        }
        Ok(order)
    }

    /// Depth-first, dependencies before dependents; `path` guards against cycles
    /// in a corrupt modules.dep.
    fn visit(
        &self,
        file: &str,
        done: &mut HashSet<String>,
        path: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(file) || !path.insert(file.to_string()) {
            return Ok(());
        }
        let deps = self.deps.get(file).ok_or_else(|| Error::ModuleNotFound {
            name: file.to_string(),
            modules_dep: self.path.clone(),
        })?;
        for dep in deps {
            self.visit(dep, done, path, order)?;
        }
        path.remove(file);
        done.insert(file.to_string());
        order.push(file.to_string());
        Ok(())
    }
}

/// `kernel/fs/fat/vfat.ko.xz` → `vfat`; `-` and `_` are the same to the kernel.
fn module_name(file: &str) -> String {
    module_file_name(file)
        .trim_end_matches(".ko")
        .replace('-', "_")
}

/// The uncompressed file name: `kernel/fs/fat/vfat.ko.xz` → `vfat.ko`.
fn module_file_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(stem) = base.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    base.to_string()
}

/// Reads a module, decompressing it on the host: busybox's insmod loads
/// plain ELF only.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let read = || std::fs::read(path).map_err(io_err(format!("reading module {name}")));
    if name.ends_with(".zst") {
        let file = std::fs::File::open(path).map_err(io_err(format!("opening module {name}")))?;
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(file)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(io_err(format!("decompressing module {name}")))?;
        Ok(out)
    } else if name.ends_with(".xz") {
        Ok(tool::run(Command::new("xz").arg("-dc").arg(path))?.stdout)
    } else if name.ends_with(".gz") {
        Ok(tool::run(Command::new("gzip").arg("-dc").arg(path))?.stdout)
    } else {
        read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/fs/nls/nls-x.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
";

    fn dep() -> ModulesDep {
        ModulesDep::parse(PathBuf::from("modules.dep"), DEP)
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = dep().load_order(&["virtio_pci", "virtio_blk"]).unwrap();
        let names: Vec<String> = order.iter().map(|f| module_name(f)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn dash_and_underscore_are_the_same_module() {
        assert_eq!(
            dep().load_order(&["nls_x"]).unwrap(),
            ["kernel/fs/nls/nls-x.ko"]
        );
    }

    #[test]
    fn cycles_terminate() {
        assert_eq!(dep().load_order(&["a"]).unwrap().len(), 2);
    }

    #[test]
    fn unknown_module_is_named() {
        let err = dep().load_order(&["nosuch"]).unwrap_err().to_string();
        assert!(
            err.contains("nosuch") && err.contains("modules.dep"),
            "{err}"
        );
    }

    #[test]
    fn compressed_names_are_stripped() {
        assert_eq!(module_file_name("kernel/fs/fat/vfat.ko.zst"), "vfat.ko");
        assert_eq!(module_name("kernel/fs/fat/vfat.ko.xz"), "vfat");
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"\x7fELF pretend module".to_vec();
        let zst = dir.path().join("m.ko.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        assert_eq!(read_module(&zst).unwrap(), data);
        let plain = dir.path().join("m.ko");
        std::fs::write(&plain, &data).unwrap();
        tool::run(Command::new("xz").arg("-k").arg(&plain)).unwrap();
        assert_eq!(read_module(&dir.path().join("m.ko.xz")).unwrap(), data);
    }
}
