//! Room on this machine: the memory available now and the free space of a file system,
//! read before anything large is allocated or written, so that a size which cannot fit is
//! refused with the bytes it would need instead of aborting the process half-way.
//!
//! A [`Budget`] is a named sum of byte counts (states, workspace, logits, …), added with
//! saturation so that absurd sizes compare as "too large" and never wrap around.

use std::path::Path;

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` where it cannot be read).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes an unprivileged process may still write to the file system holding `path` (or,
/// when `path` does not exist yet, its nearest existing ancestor).
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(path).ok()?;
    let existing = absolute.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type, written by the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    stat.f_bavail.checked_mul(stat.f_frsize)
}

/// Bytes with a binary unit: `196608` → `192.0 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut x = n as f64;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if x < 1024.0 {
            break;
        }
        x /= 1024.0;
        unit = u;
    }
    if unit == UNITS[0] {
        format!("{n} B")
    } else {
        format!("{x:.1} {unit}")
    }
}

/// What a piece of work needs, part by part.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    parts: Vec<(String, u64)>,
}

impl Budget {
    pub fn new() -> Budget {
        Budget::default()
    }

    /// Adds a part (parts of 0 bytes are left out of messages).
    pub fn add(&mut self, what: impl Into<String>, bytes: u64) -> &mut Budget {
        if bytes > 0 {
            self.parts.push((what.into(), bytes));
        }
        self
    }

    /// `count × each` bytes, saturating.
    pub fn add_n(&mut self, what: impl Into<String>, count: u64, each: u64) -> &mut Budget {
        self.add(what, count.saturating_mul(each))
    }

    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |sum, (_, b)| sum.saturating_add(*b))
    }

    /// `12,884,901,888 bytes = 12.0 GiB (states and KV caches 8.0 GiB, workspace 4.0 GiB)`.
    pub fn describe(&self) -> String {
        let total = self.total();
        let amount = if total == u64::MAX {
            "more than 2^64 bytes".to_string()
        } else {
            format!("{} bytes = {}", group(total), human_bytes(total))
        };
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(what, b)| match *b {
                u64::MAX => format!("{what} more than 2^64 bytes"),
                b => format!("{what} {}", human_bytes(b)),
            })
            .collect();
        if parts.is_empty() {
            amount
        } else {
            format!("{amount} ({})", parts.join(", "))
        }
    }

    /// Refuses `what` when it needs more memory than is available now. Where the
    /// available memory cannot be read (not Linux), only sizes no address space holds are
    /// refused.
    pub fn check_memory(&self, what: &str) -> Result<(), String> {
        let need = self.total();
        let available = available_memory();
        let limit = available.unwrap_or(isize::MAX as u64);
        if need <= limit {
            return Ok(());
        }
        Err(match available {
            Some(a) => format!(
                "{what} needs {}, but {} bytes ({}) of memory are available",
                self.describe(),
                group(a),
                human_bytes(a)
            ),
            None => format!(
                "{what} needs {}, more than can be addressed",
                self.describe()
            ),
        })
    }

    /// Refuses `what` when it would write more than the file system at `path` has free.
    pub fn check_disk(&self, what: &str, path: &Path) -> Result<(), String> {
        let need = self.total();
        match free_disk(path) {
            Some(free) if need > free => Err(format!(
                "{what} needs {}, but the file system of {} has {} bytes ({}) free",
                self.describe(),
                path.display(),
                group(free),
                human_bytes(free)
            )),
            _ => Ok(()),
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_and_grouped_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(196_608), "192.0 KiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(12_884_901_888), "12,884,901,888");
    }

    #[test]
    fn budgets_saturate_and_name_their_parts() {
        let mut b = Budget::new();
        b.add("states", 1 << 30)
            .add("workspace", 0)
            .add_n("logits", 4, 1 << 20);
        assert_eq!(b.total(), (1 << 30) + (4 << 20));
        let text = b.describe();
        assert!(
            text.starts_with("1,077,936,128 bytes = 1.0 GiB (states 1.0 GiB, logits 4.0 MiB)"),
            "{text}"
        );
        let mut huge = Budget::new();
        huge.add_n("KV caches", u64::MAX / 2, 3).add("more", 5);
        assert_eq!(huge.total(), u64::MAX);
        assert!(huge.describe().starts_with("more than 2^64 bytes"));
        assert!(
            huge.check_memory("this run")
                .unwrap_err()
                .contains("KV caches")
        );
    }

    #[test]
    fn free_disk_reads_the_nearest_existing_directory() {
        let tmp = std::env::temp_dir();
        let free = free_disk(&tmp).unwrap();
        assert!(free > 0);
        let below = free_disk(&tmp.join("no/such/dir/yet")).unwrap();
        // Both read the same file system; its free space may move between the calls.
        assert!(below.abs_diff(free) < free / 2 + (1 << 30));
        let mut b = Budget::new();
        b.add("weights", u64::MAX - 1);
        let e = b.check_disk("this engine", &tmp).unwrap_err();
        assert!(e.contains("weights") && e.contains("free"), "{e}");
    }
}
