//! The facts about the host printed beside every result: figures from a shared 2-core
//! virtual machine mean little without them (notes/limits.md).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores this process may run on.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -srm`.
    pub kernel: String,
    pub hostname: String,
    /// Where the embedded servers keep their data (the disk whose fsync is measured).
    pub data_dir: String,
}

impl Machine {
    pub fn probe(data_dir: &std::path::Path) -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let uname = rustix::system::uname();
        let kernel = format!(
            "{} {} {}",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy(),
            uname.machine().to_string_lossy()
        );
        Machine {
            cores,
            cpu_model,
            kernel,
            hostname: uname.nodename().to_string_lossy().into_owned(),
            data_dir: data_dir.display().to_string(),
        }
    }
}
