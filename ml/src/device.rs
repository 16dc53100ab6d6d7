//! Device selection (`--device auto|cpu|cuda`), the precision policy (fp32 on CPU, bf16 autocast on GPU), and the
//! allocator setting that CPU training wants.

use anyhow::{Result, bail};
use std::str::FromStr;
use tch::Device;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA device 0 when one is usable, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda,
            other => bail!("unknown device {other:?} (expected auto, cpu or cuda)"),
        })
    }
}

impl DeviceChoice {
    /// The device to use; asking for `cuda` where none is usable is an error, not a silent CPU run.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => bail!(
                "--device cuda was requested but libtorch sees no CUDA device (is the crate built with the `cuda` feature?)"
            ),
        }
    }
}

/// Runs `f` under bf16 autocast on a GPU and plainly (fp32) on CPU: CPU bf16 is slow and hurts parity.
pub fn with_autocast<T>(device: Device, f: impl FnOnce() -> T) -> T {
    if device.is_cuda() {
        autocast_dtype::use_bf16_on_cuda();
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// libtorch's autocast casts CUDA matrix products to float16 unless told otherwise (its default, per thread), and tch
/// binds no setter; float16 without loss scaling lets small gradients underflow. These are libtorch's own exported
/// functions (`at::autocast::{set,get}_autocast_dtype`, ATen/autocast_mode.h): `c10::DeviceType` and
/// `c10::ScalarType` are 8-bit enums, passed and returned as such.
pub mod autocast_dtype {
    unsafe extern "C" {
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        fn at_set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        fn at_get_autocast_dtype(device_type: i8) -> i8;
    }
    /// `c10::DeviceType::CUDA`.
    const CUDA: i8 = 1;
    /// `c10::ScalarType::BFloat16`.
    pub const BFLOAT16: i8 = 15;
    /// `c10::ScalarType::Half`.
    pub const HALF: i8 = 5;

    /// Makes CUDA autocast use bfloat16 in this thread (the setting is thread-local in libtorch).
    pub fn use_bf16_on_cuda() {
        // SAFETY: writes one thread-local value; both arguments are valid enumerators.
        unsafe { at_set_autocast_dtype(CUDA, BFLOAT16) }
    }

    /// The dtype CUDA autocast uses in this thread, as a `c10::ScalarType` code.
    pub fn cuda() -> i8 {
        // SAFETY: reads one thread-local value.
        unsafe { at_get_autocast_dtype(CUDA) }
    }
}

/// Fixes every seed libtorch uses, so CPU runs are bit-for-bit repeatable for a given thread count.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(seed);
    }
}

/// Keeps the memory of freed tensors in the process instead of handing it back to the kernel after every step.
///
/// glibc serves allocations above 128 KiB (most activations) with fresh `mmap`s and unmaps them when freed, so every
/// training step page-faults its whole working set in again: on the tiny GPT-2 DPO step of `ml/BENCH-TRL.md` that
/// was ~3,700 page faults and ~15 ms of system time per step. Raising the mmap and trim thresholds (the largest
/// values glibc accepts) lets the heap keep and reuse those blocks. Process-wide and idempotent; called by the
/// trainers, and by any binary that does ML work at its start.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; it is called once, before the tensors it concerns exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    });
}

/// The most memory this machine can give a process, in bytes: physical memory plus swap (`/proc/meminfo`'s
/// `MemTotal` + `SwapTotal`); `None` where that file is missing or unreadable. A bound, not what is free now: a
/// model that needs more than this cannot be trained here whatever else runs, so it is refused before libtorch is
/// asked (libtorch's failed allocation surfaces as a panic deep inside tch).
pub fn machine_memory_bytes() -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's default for CUDA autocast is float16; `with_autocast` must switch it to bfloat16 (checkable
    /// without a GPU: the setting is a per-thread value).
    #[test]
    fn cuda_autocast_is_bf16() {
        std::thread::spawn(|| {
            assert_eq!(autocast_dtype::cuda(), autocast_dtype::HALF, "libtorch's default changed");
            autocast_dtype::use_bf16_on_cuda();
            assert_eq!(autocast_dtype::cuda(), autocast_dtype::BFLOAT16);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn meminfo_gives_memory_plus_swap() {
        let text = "MemTotal:       24568120 kB\nMemFree:        20000000 kB\nSwapTotal:       1048576 kB\n";
        assert_eq!(parse_meminfo(text), Some((24568120 + 1048576) * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1000 kB\n"), Some(1000 * 1024), "no swap line: swap 0");
        assert_eq!(parse_meminfo("MemFree: 1000 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
        #[cfg(target_os = "linux")]
        assert!(machine_memory_bytes().is_some_and(|b| b > 1 << 20));
    }
}
