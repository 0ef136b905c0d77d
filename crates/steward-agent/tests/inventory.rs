//! The inventory of this very machine.

use steward_agent::inventory;

#[test]
fn inventory_names_host_os_cpu_and_memory() {
    let inv = inventory::collect();
    assert!(
        !inv.hostname.is_empty() && inv.hostname != "unknown",
        "{inv:?}"
    );
    assert!(
        !inv.os_name.is_empty() && inv.os_name != "unknown",
        "{inv:?}"
    );
    assert!(!inv.kernel.is_empty() && inv.kernel != "unknown", "{inv:?}");
    assert!(inv.cpu_count >= 1, "{inv:?}");
    assert!(!inv.cpu_model.is_empty(), "{inv:?}");
    assert!(inv.memory_total_bytes > 64 * 1024 * 1024, "{inv:?}");
    assert_eq!(inv.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!inv.interfaces.is_empty(), "at least loopback: {inv:?}");
    let lo = inv.interfaces.iter().find(|i| i.name == "lo");
    if let Some(lo) = lo {
        assert!(
            lo.addresses.iter().any(|a| a == "127.0.0.1/8"),
            "{:?}",
            lo.addresses
        );
    }
    let mut sorted = inv.interfaces.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        sorted, inv.interfaces,
        "lists are sorted, so the hash is stable"
    );
}

#[test]
fn the_hash_is_stable_and_ignores_free_space_only() {
    let inv = inventory::collect();
    let h = inventory::hash(&inv);
    assert_eq!(h.len(), 64);
    assert_eq!(h, inventory::hash(&inventory::collect()));
    let mut fuller = inv.clone();
    for d in &mut fuller.disks {
        d.available_bytes = d.available_bytes.saturating_sub(12345);
    }
    assert_eq!(
        h,
        inventory::hash(&fuller),
        "free space does not change the hash"
    );
    let mut more_ram = inv.clone();
    more_ram.memory_total_bytes += 1;
    assert_ne!(h, inventory::hash(&more_ram));
    let mut renamed = inv;
    renamed.hostname.push('x');
    assert_ne!(h, inventory::hash(&renamed));
}
