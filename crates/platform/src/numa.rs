//! NUMA nodes through libnuma (bound with bindgen, linked statically).
//!
//! A CXL memory expander shows up as a node with memory and no CPUs; LIA's CXL tier is such a
//! node named by number (`numa:N`).

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
pub(crate) mod sys {
    include!(concat!(env!("OUT_DIR"), "/numa_sys.rs"));
}

/// One NUMA node of this machine.
#[derive(Clone, Debug)]
pub struct NumaNode {
    pub id: u32,
    /// Total memory of the node in bytes.
    pub mem_total: u64,
    /// Free memory of the node in bytes, when it was listed.
    pub mem_free: u64,
    /// Logical CPUs of the node; empty for a memory-only (for example CXL) node.
    pub cpus: Vec<usize>,
}

impl NumaNode {
    pub fn is_memory_only(&self) -> bool {
        self.cpus.is_empty()
    }
}

/// Whether libnuma works on this machine (a kernel without NUMA support says no).
pub fn numa_available() -> bool {
    // SAFETY: numa_available takes no arguments and only probes the kernel.
    unsafe { sys::numa_available() >= 0 }
}

/// The nodes that have memory. On a machine without NUMA support this is one node 0 with the
/// machine's memory, so that `numa:0` always names something.
pub fn numa_nodes() -> Vec<NumaNode> {
    let mut nodes = Vec::new();
    if numa_available() {
        // SAFETY: plain queries on libnuma's view of the machine.
        let max = unsafe { sys::numa_max_node() };
        for id in 0..=max.max(0) {
            let mut free: libc::c_longlong = 0;
            // SAFETY: `free` is a valid out-pointer; a node without memory returns -1 or 0.
            let total = unsafe { sys::numa_node_size64(id, &mut free) };
            if total <= 0 {
                continue;
            }
            nodes.push(NumaNode {
                id: id as u32,
                mem_total: total as u64,
                mem_free: free.max(0) as u64,
                cpus: node_cpus(id as u32),
            });
        }
    }
    if nodes.len() == 1 {
        // One node is the whole machine; some virtual machines report a node size smaller
        // than the memory they actually give (ballooned or hot-plugged memory), so trust
        // /proc/meminfo there.
        let (total, free) = meminfo();
        if total > nodes[0].mem_total {
            nodes[0].mem_total = total;
            nodes[0].mem_free = free;
        }
    }
    if nodes.is_empty() {
        let (total, free) = meminfo();
        nodes.push(NumaNode {
            id: 0,
            mem_total: total,
            mem_free: free,
            cpus: (0..std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
                .collect(),
        });
    }
    nodes
}

fn node_cpus(id: u32) -> Vec<usize> {
    std::fs::read_to_string(format!("/sys/devices/system/node/node{id}/cpulist"))
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default()
}

/// Parses the kernel's CPU list format, e.g. `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.trim().parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

fn meminfo() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_parsing() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }

    #[test]
    fn there_is_always_a_node_with_memory() {
        let nodes = numa_nodes();
        assert!(!nodes.is_empty());
        assert!(nodes.iter().all(|n| n.mem_total > 0));
    }
}
