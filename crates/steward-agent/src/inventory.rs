//! Hardware and software inventory, and its hash.
//!
//! Collection reads only what the inventory reports (memory, CPU list, disks, interfaces) and
//! drops sysinfo's state right after, so an idle agent does not carry it between check-ins.

use steward_proto::{Disk, Inventory, NetInterface};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, System};

/// Collect the inventory of this host. Anything the OS will not tell is reported as `unknown`
/// (or 0) rather than failing the check-in.
pub fn collect() -> Inventory {
    let unknown = || "unknown".to_owned();
    let (cpu_model, cpu_count, memory_total_bytes) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            sys.refresh_cpu_list(CpuRefreshKind::nothing());
            let cpus = sys.cpus();
            let model = cpus
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(unknown);
            (
                model,
                u32::try_from(cpus.len()).unwrap_or(u32::MAX),
                sys.total_memory(),
            )
        }
        Err(_) => (unknown(), 0, 0),
    };
    let mut disks: Vec<Disk> = Disks::new_with_refreshed_list()
        .map(|d| {
            d.iter()
                .map(|d| Disk {
                    mount: d.mount_point().display().to_string(),
                    fs: d.file_system().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    available_bytes: d.available_space(),
                })
                .collect()
        })
        .unwrap_or_default();
    disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    disks.dedup_by(|a, b| a.mount == b.mount);
    let mut interfaces: Vec<NetInterface> = Networks::new_with_refreshed_list()
        .map(|n| {
            n.iter()
                .map(|(name, data)| {
                    let mut addresses: Vec<String> = data
                        .ip_networks()
                        .iter()
                        .map(|ip| format!("{}/{}", ip.addr, ip.prefix))
                        .collect();
                    addresses.sort();
                    NetInterface {
                        name: name.to_string_lossy().into_owned(),
                        mac: data.mac_address().to_string(),
                        addresses,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Inventory {
        hostname: System::host_name().unwrap_or_else(|_| unknown()),
        os_name: System::name().unwrap_or_else(|_| unknown()),
        os_version: System::os_version().unwrap_or_else(|_| unknown()),
        kernel: System::kernel_version().unwrap_or_else(|_| unknown()),
        cpu_model,
        cpu_count,
        memory_total_bytes,
        disks,
        interfaces,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// SHA-256 (hex) of the inventory's canonical JSON: object keys sorted, lists sorted by
/// [`collect`], and free disk space left out.
///
/// Free space changes with every log line written anywhere on the host; hashing it would make
/// the "unchanged" inventory change at nearly every check-in and defeat the point of the hash.
/// Free space is still *sent* whenever the inventory is (on any real change, on request, and
/// daily).
pub fn hash(inv: &Inventory) -> String {
    let mut stable = inv.clone();
    for d in &mut stable.disks {
        d.available_bytes = 0;
    }
    let canonical = serde_json::to_value(&stable)
        .map(|v| canonical_json(&v))
        .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys in sorted order at every level, whatever serde_json's map type.
fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        map.get(k).map(canonical_json).unwrap_or_default()
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}
