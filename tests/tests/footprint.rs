//! A node's memory footprint: its allocator leaves no transparent huge pages behind
//! (mimalloc is built with `no_thp`; with huge pages a node's private memory doubled,
//! docs/performance.md "Memory of one node").

use agentmesh_tests::{Mesh, NodeOpts};

/// `AnonHugePages` of `pid`, in KiB.
fn anon_huge_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("AnonHugePages in smaps_rollup")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_holds_no_transparent_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    // With THP "never" (or no THP at all) nothing can be huge and the check below would pass
    // without proving anything: report it as a skip, which CI prints.
    if thp.is_empty() || thp.contains("[never]") {
        agentmesh_tests::report_skip(
            "a_node_holds_no_transparent_huge_pages",
            "transparent huge pages are off on this kernel",
        );
        return;
    }
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    let callee = mesh
        .start_node(NodeOpts::caps(&["echo.test"]))
        .await
        .unwrap();
    mesh.wait_offers(&caller, "echo.test", 1).await.unwrap();
    // Some traffic, so the allocator has grown its heap.
    for _ in 0..200 {
        let r = mesh
            .call(&caller, "echo.test", r#"{"x":1}"#, &[])
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    for node in [&caller, &callee] {
        let kib = anon_huge_kib(mesh.procs.pid(node.proc_index));
        assert_eq!(kib, 0, "node {} holds {kib} KiB of huge pages", node.id);
    }
}
