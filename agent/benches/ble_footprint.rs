//! BLE footprint and speed, measured on the fake BlueZ (`cargo bench -p vitalgate --bench
//! ble_footprint`). Prints a table; asserts nothing about speed (the build machine is shared
//! and noisy). Needs dbus-daemon, python3-dbus and python3-gi, like the BLE tests.
//!
//! | row | how |
//! |---|---|
//! | RSS | `VmRSS` of the agent after 20 s with 200 advertising health devices (3 configured), beside the same agent with no BLE device |
//! | CPU per advertisement | agent CPU time (utime+stime) over a window / advertisements the emulator delivered in it, minus the idle agent's CPU rate |
//! | notification → durable | the agent's own p50/p99 (logged at shutdown) over 300 live measurements |
//! | recovery | adapter power-off → discovery running again; BlueZ restart → discovery running again (emulator timestamps) |
//! | D-Bus match rules | AddMatch − RemoveMatch of the agent's connections after 20 and after 200 connect/notify/disconnect cycles (an hour of a busy clinic's scanning, compressed) |

#[path = "../../tests/bleemu/mod.rs"]
mod bleemu;
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use bleemu::*;
use serde_json::{json, Value};

const CUFFS: [&str; 3] = [
    "00:09:1F:00:00:01",
    "00:09:1F:00:00:02",
    "00:09:1F:00:00:03",
];

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss_kb, ticks)
}

fn ticks_per_s() -> f64 {
    100.0 // USER_HZ on Linux
}

fn config(h: &harness::Harness, ble: bool) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[ble]\nidle_disconnect_secs = 1\nreconnect_backoff_max_secs = 2\n");
    if ble {
        for (i, a) in CUFFS.iter().enumerate() {
            text.push_str(&format!(
                "\n[[devices]]\nname = \"cuff{i}\"\nkind = \"ble\"\naddress = \"{a}\"\nprofile = \"blood-pressure\"\npatient = \"Patient/p{i}\"\n"
            ));
        }
    }
    let p = h
        .dir
        .path()
        .join(if ble { "ble.toml" } else { "idle.toml" });
    std::fs::write(&p, text).unwrap();
    p
}

fn adverts(emu: &Emulator) -> u64 {
    emu.stats(None)["adverts"].as_u64().unwrap_or(0)
}

fn main() {
    if !emulator_available("ble_footprint bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(harness::Harness::new(harness::Broker::None));
    let bus = Bus::start();
    let mut devices: Vec<Value> = CUFFS
        .iter()
        .map(|a| {
            json!({"address": a, "profile": "blood-pressure", "advertise_ms": 1000,
                        "stored_interval_ms": 1})
        })
        .collect();
    for i in 0..197u32 {
        devices.push(
            json!({"address": format!("02:00:00:00:{:02X}:{:02X}", i >> 8, i & 0xFF),
                            "uuids": ["1810"], "advertise_ms": 1000, "address_type": "random"}),
        );
    }
    let emu = Emulator::start(&bus, &json!({"devices": devices}));

    // Baseline: the same binary, no BLE device.
    let idle_cfg = config(&h, false);
    let mut idle = common::vitalgate()
        .args(["run", "--config"])
        .arg(&idle_cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let (idle_rss0, idle_t0) = proc_stat(idle.id());
    std::thread::sleep(Duration::from_secs(15));
    let (idle_rss, idle_t1) = proc_stat(idle.id());
    let idle_rate = (idle_t1 - idle_t0) as f64 / ticks_per_s() / 15.0;
    let _ = idle.kill();
    let _ = idle.wait();
    let _ = idle_rss0;

    // The agent with 3 configured cuffs among 200 advertisers.
    let ble_cfg = config(&h, true);
    let mut agent = BleAgent::spawn(&ble_cfg, &bus, h.dir.path());
    let pid = agent.child.id();
    std::thread::sleep(Duration::from_secs(5));
    let (_, t0) = proc_stat(pid);
    let a0 = adverts(&emu);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    let (rss, t1) = proc_stat(pid);
    let a1 = adverts(&emu);
    let window = w0.elapsed().as_secs_f64();
    let cpu_s = (t1 - t0) as f64 / ticks_per_s() - idle_rate * window;
    let per_adv_ms = cpu_s * 1000.0 / (a1 - a0).max(1) as f64;

    // Notification-to-durable: live measurements on a connected cuff.
    let mut sent = 0;
    let base = Dt::now_utc().plus(-7200);
    while sent < 300 {
        let n = emu.count(|e| e["ev"] == "subscribed" && e["address"] == CUFFS[0]);
        emu.wait_count(
            |e| e["ev"] == "subscribed" && e["address"] == CUFFS[0],
            n.max(1),
            Duration::from_secs(60),
        );
        for _ in 0..20 {
            let r = emu.cmd(json!({"cmd": "measure", "address": CUFFS[0],
                                   "payload": bp(100 + (sent % 60) as i16, 70, 80, 60, base.plus(sent), None)}));
            sent += 1;
            let _ = r;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Match rules: after 20 and after 200 connect/notify/disconnect cycles.
    let match_rules = |emu: &Emulator| -> i64 {
        emu.stats(None)["client_match_rules"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_i64).sum())
            .unwrap_or(-1)
    };
    let cycle = |emu: &Emulator, k: usize| {
        for _ in 0..k {
            let a = CUFFS[1];
            let n = emu.count(|e| e["ev"] == "subscribed" && e["address"] == a);
            emu.wait_count(
                |e| e["ev"] == "subscribed" && e["address"] == a,
                n.max(1),
                Duration::from_secs(60),
            );
            emu.cmd(json!({"cmd": "disconnect", "address": a}));
            emu.wait_count(
                |e| e["ev"] == "subscribed" && e["address"] == a,
                n + 1,
                Duration::from_secs(60),
            );
        }
    };
    // BLE_BENCH_SESSIONS: the total sessions of the second count (default 200).
    let sessions: usize = std::env::var("BLE_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(21);
    cycle(&emu, 20);
    let rules_20 = match_rules(&emu);
    cycle(&emu, sessions - 20);
    let rules_200 = match_rules(&emu);

    // Recovery: adapter power-off, then BlueZ restart.
    let scans = emu.count(|e| e["ev"] == "discovery" && e["on"] == true);
    let off = emu.cmd(json!({"cmd": "power", "on": false}));
    let back = emu.wait_count_event(
        |e| e["ev"] == "discovery" && e["on"] == true,
        scans + 1,
        Duration::from_secs(60),
    );
    let power_recovery = back["t"].as_f64().unwrap() - off["t"].as_f64().unwrap();
    let scans = emu.count(|e| e["ev"] == "discovery" && e["on"] == true);
    let restart = emu.cmd(json!({"cmd": "restart_bluez", "down_ms": 300}));
    let back = emu.wait_count_event(
        |e| e["ev"] == "discovery" && e["on"] == true,
        scans + 1,
        Duration::from_secs(60),
    );
    let bluez_recovery = back["t"].as_f64().unwrap() - restart["t"].as_f64().unwrap();

    agent.terminate();
    let log = agent.stderr();
    let field = |k: &str| -> String {
        let line = log
            .lines()
            .rfind(|l| l.contains("notification-to-durable"))
            .unwrap_or_default();
        // Drop ANSI colour sequences (ESC [ ... m).
        let mut clean = String::new();
        let mut in_esc = false;
        for c in line.chars() {
            match (in_esc, c) {
                (false, '\u{1b}') => in_esc = true,
                (true, 'm') => in_esc = false,
                (true, _) => {}
                (false, c) => clean.push(c),
            }
        }
        clean
            .split_whitespace()
            .find_map(|w| {
                w.strip_prefix(k)
                    .and_then(|v| v.strip_prefix('='))
                    .map(String::from)
            })
            .unwrap_or_else(|| "?".into())
    };
    let p50: f64 = field("p50_us").parse().unwrap_or(f64::NAN);
    let p99: f64 = field("p99_us").parse().unwrap_or(f64::NAN);

    println!(
        "\nBLE footprint on the emulator ({} advertisements in a {:.0} s window)\n",
        a1 - a0,
        window
    );
    println!("| measure | vitalgate | baseline | goal |");
    println!("|---|---|---|---|");
    println!("| RSS, 200 advertising devices, 3 configured | {:.1} MiB | {:.1} MiB (same binary, no BLE device) | <= 12 MB |", rss as f64 / 1024.0, idle_rss as f64 / 1024.0);
    println!("| CPU time per advertisement handled | {per_adv_ms:.3} ms | idle agent {:.2} ms/s subtracted | <= 0.2 ms |", idle_rate * 1000.0);
    println!(
        "| notification -> durable, p50 / p99 | {:.1} / {:.1} ms | - | p99 <= 50 ms |",
        p50 / 1000.0,
        p99 / 1000.0
    );
    println!("| recovery after adapter power-off | {power_recovery:.2} s | - | - |");
    println!("| recovery after BlueZ restart | {bluez_recovery:.2} s | - | - |");
    println!("| D-Bus match rules after 20 / {sessions} sessions | {rules_20} / {rules_200} | - | must not grow |");
}
