//! The CPU the runtime runs on, read from CPUID: its vendor and model, the instruction
//! sets that decide which code may run (the engine's host code, the matrix library's
//! kernels), and the check that an engine's host code was built for features this CPU has.

use std::sync::OnceLock;

/// What the runtime knows about the CPU it runs on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    /// `GenuineIntel`, `AuthenticAMD`, … (empty off x86-64).
    pub vendor: String,
    /// The brand string, e.g. `AMD EPYC 9B14`.
    pub model: String,
    /// The vector and matrix extensions present, in LLVM's names (`avx2`, `avx512bf16`, …).
    pub features: Vec<&'static str>,
}

/// The extensions [`Machine::features`] reports: what decides which kernels can run.
const REPORTED: [&str; 13] = [
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
];

impl Machine {
    /// This process's CPU (read once).
    pub fn this() -> &'static Machine {
        static THIS: OnceLock<Machine> = OnceLock::new();
        THIS.get_or_init(|| {
            let (vendor, model) = identity();
            Machine {
                vendor,
                model,
                features: REPORTED
                    .into_iter()
                    .filter(|f| supports(f) == Some(true))
                    .collect(),
            }
        })
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature)
    }

    /// The extensions an LLVM feature string (`+avx2,-avx512f,…`) enables that this CPU
    /// lacks: code built for them would stop on an illegal instruction here. Features the
    /// runtime cannot test are not reported.
    pub fn missing(&self, llvm_features: &str) -> Vec<String> {
        llvm_features
            .split(',')
            .filter_map(|f| f.trim().strip_prefix('+'))
            .filter(|f| supports(f) == Some(false))
            .map(str::to_string)
            .collect()
    }

    /// Reported extensions this CPU has that an LLVM feature string does not enable: what
    /// code built for that string leaves unused.
    pub fn unused(&self, llvm_features: &str) -> Vec<&'static str> {
        let enabled: Vec<&str> = llvm_features
            .split(',')
            .filter_map(|f| f.trim().strip_prefix('+'))
            .collect();
        self.features
            .iter()
            .copied()
            .filter(|f| !enabled.contains(f))
            .collect()
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = if self.model.is_empty() {
            "an unidentified CPU"
        } else {
            &self.model
        };
        write!(f, "{model} ({})", self.features.join(" "))
    }
}

/// Whether this CPU has the instruction-set extension LLVM calls `feature`; `None` for a
/// feature the runtime cannot test (tuning flags, extensions no kernel uses).
pub fn supports(feature: &str) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let yes = match feature {
            "sse" | "sse2" | "fxsr" | "mmx" | "x87" | "64bit" | "cmov" | "cx8" => true,
            "sse3" => has!("sse3"),
            "ssse3" => has!("ssse3"),
            "sse4.1" => has!("sse4.1"),
            "sse4.2" => has!("sse4.2"),
            "sse4a" => has!("sse4a"),
            "popcnt" => has!("popcnt"),
            "lzcnt" => has!("lzcnt"),
            "bmi" => has!("bmi1"),
            "bmi2" => has!("bmi2"),
            "movbe" => has!("movbe"),
            "cx16" => has!("cmpxchg16b"),
            "aes" => has!("aes"),
            "pclmul" => has!("pclmulqdq"),
            "sha" => has!("sha"),
            "adx" => has!("adx"),
            "f16c" => has!("f16c"),
            "fma" => has!("fma"),
            "avx" => has!("avx"),
            "avx2" => has!("avx2"),
            "gfni" => has!("gfni"),
            "vaes" => has!("vaes"),
            "vpclmulqdq" => has!("vpclmulqdq"),
            "avx512f" => has!("avx512f"),
            "avx512dq" => has!("avx512dq"),
            "avx512cd" => has!("avx512cd"),
            "avx512bw" => has!("avx512bw"),
            "avx512vl" => has!("avx512vl"),
            "avx512ifma" => has!("avx512ifma"),
            "avx512vbmi" => has!("avx512vbmi"),
            "avx512vbmi2" => has!("avx512vbmi2"),
            "avx512vnni" => has!("avx512vnni"),
            "avx512bitalg" => has!("avx512bitalg"),
            "avx512vpopcntdq" => has!("avx512vpopcntdq"),
            "avx512bf16" => has!("avx512bf16"),
            "avx512fp16" => has!("avx512fp16"),
            "avx512vp2intersect" => has!("avx512vp2intersect"),
            "avxvnni" => has!("avxvnni"),
            _ => return None,
        };
        Some(yes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        None
    }
}

/// Vendor and brand string from CPUID.
fn identity() -> (String, String) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // Leaves above the maximum are guarded below.
        let regs = |leaf: u32| __cpuid(leaf);
        let bytes = |words: &[u32]| -> String {
            let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            String::from_utf8_lossy(&b)
                .trim_matches(char::from(0))
                .trim()
                .to_string()
        };
        let v = regs(0);
        let vendor = bytes(&[v.ebx, v.edx, v.ecx]);
        let model = if regs(0x8000_0000).eax >= 0x8000_0004 {
            let words: Vec<u32> = (0x8000_0002..=0x8000_0004)
                .flat_map(|leaf| {
                    let r = regs(leaf);
                    [r.eax, r.ebx, r.ecx, r.edx]
                })
                .collect();
            bytes(&words)
        } else {
            String::new()
        };
        (vendor, model)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (String::new(), String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpu_is_identified_consistently() {
        let m = Machine::this();
        // Every x86-64 CPU has SSE2, which code may always assume.
        assert_eq!(supports("sse2"), Some(true));
        assert_eq!(supports("fast-gather"), None);
        for f in &m.features {
            assert_eq!(supports(f), Some(true), "{f}");
        }
        assert!(m.missing("+sse2,+cx16,-avx512f").is_empty() || !m.has("sse4.2"));
        if m.has("avx512f") {
            assert!(m.has("avx2"), "AVX-512 CPUs have AVX2");
        }
    }

    #[test]
    fn missing_features_are_the_enabled_ones_the_cpu_lacks() {
        let m = Machine::this();
        let absent = REPORTED.into_iter().find(|f| !m.has(f));
        if let Some(f) = absent {
            assert_eq!(m.missing(&format!("+sse2,-{f},+{f},+tuning-flag")), [f]);
        }
        assert!(m.missing("-avx512f,-amx-tile").is_empty());
        let unused = m.unused("+sse4.2");
        assert_eq!(unused.contains(&"avx2"), m.has("avx2"));
    }
}
