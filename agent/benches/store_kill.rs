//! Issue #11's kill test as a soak: the same scenario as `tests/store_kill.rs`
//! (`tests/kill_soak/mod.rs`), with the 200 kills by default, printed as a table.
//!
//! Run: `cargo bench -p vitalgate --bench store_kill` (or `--profile dev`). `VITALGATE_KILLS`
//! (default 200) sets the number of kills, `VITALGATE_KILL_READINGS` (default 10) the readings
//! published per kill, `VITALGATE_KILL_SEED` replays a run. Needs Debian's mosquitto. Exits 1
//! when a reading was lost or duplicated (or the store was found damaged, or the agent
//! panicked), so a soak in a loop stops at the first failure.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;
#[path = "../../tests/kill_soak/mod.rs"]
mod kill_soak;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let kills = env_usize("VITALGATE_KILLS", 200);
    let per_kill = env_usize("VITALGATE_KILL_READINGS", 10);
    let Some(r) = kill_soak::run(kills, per_kill, kill_soak::seed()).await else {
        eprintln!("mosquitto is not installed: nothing measured");
        return std::process::ExitCode::from(2);
    };
    println!(
        "| kills | aimed at a commit | readings acked | on server | lost | duplicates | resent after commit | store damaged | panics | wall s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
        r.kills,
        r.aimed_at_commit,
        r.acknowledged,
        r.on_server,
        r.lost,
        r.duplicates,
        r.resent_after_commit,
        r.store_damaged,
        r.panics,
        r.wall.as_secs_f64()
    );
    println!(
        "seed {} ; final `vitalgate status`: {}",
        r.seed,
        r.final_status.lines().next().unwrap_or("")
    );
    if r.clean() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
