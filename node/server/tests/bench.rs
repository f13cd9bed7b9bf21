//! `allot bench http` end to end at a small rate: the harness starts its nodes, every purchase
//! is answered 201, and the table it prints adds up (so the benchmark in docs/benchmarks.md
//! cannot rot unnoticed). With `--dashboards 0 2`, each mode runs again with two operator
//! dashboards following the bench event live, and they do receive updates.

use std::process::Command;

#[test]
fn the_http_benchmark_runs_both_commit_modes_with_and_without_dashboards() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table.md");
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["bench", "http", "--rate", "300", "--seconds", "1"])
        .args(["--dashboards", "0", "2"])
        .arg("--markdown")
        .arg(&table)
        // The nodes' data goes to the test's own temp dir.
        .env("TMPDIR", dir.path())
        .output()
        .expect("running allot bench http");
    assert!(
        out.status.success(),
        "allot bench http failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::fs::read_to_string(&table).expect("the markdown table");
    for mode in ["Group", "PerRequest"] {
        for dashboards in [0, 2] {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| 1 | {mode} | {dashboards} (")))
                .unwrap_or_else(|| panic!("no row for {mode}, {dashboards} in\n{table}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // | run | commit | dashboards (updates) | sent | 201 | errors | achieved/s | ...
            let updates: u64 = cells[3]
                .split_once('(')
                .and_then(|(_, u)| u.trim_end_matches(')').parse().ok())
                .unwrap();
            if dashboards == 0 {
                assert_eq!(updates, 0, "{row}");
            } else {
                assert!(updates >= 2, "each dashboard got its page at least: {row}");
            }
            let (sent, created, errors): (u64, u64, u64) = (
                cells[4].parse().unwrap(),
                cells[5].parse().unwrap(),
                cells[6].parse().unwrap(),
            );
            assert_eq!(sent, 300, "one second at 300/s after the warm-up: {row}");
            assert_eq!((created, errors), (sent, 0), "{row}");
            let achieved: f64 = cells[7].parse().unwrap();
            assert!(achieved > 0.0 && achieved <= 300.0 * 1.05, "{row}");
        }
    }
    assert!(table.contains("Median of 1 run(s) per mode"), "{table}");
}
