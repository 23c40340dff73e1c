#![no_main]
//! Fuzzes the generic line parser with a fixed device file that uses every feature: ignore
//! patterns, several rules, missing markers, status gating, unit capture, scale/offset, ranges,
//! flags and a sum8 checksum.

use std::path::Path;
use std::sync::OnceLock;

use device_drivers::serial::generic::DeviceConfig;
use libfuzzer_sys::fuzz_target;

mod serial_common;

const CONFIG: &str = r#"
[device]
id = "fuzz"
[device.serial]
baud = 9600
data_bits = 8
parity = "none"
stop_bits = 1
[device.framing]
kind = "line"
max_line_bytes = 300
ignore = ['^[^=,]*$']

[[device.rule]]
name = "nonin"
regex = '^SPO2=(?P<spo2>[0-9]{3}|---) HR=(?P<hr>[0-9]{3}|---)(?P<fast> F)?(?P<event>\*)?$'
missing = ["---"]
[[device.rule.reading]]
capture = "spo2"
type = "spo2"
parse = "int"
unit = "%"
min = 0
max = 100
[[device.rule.reading]]
capture = "hr"
type = "pulse_rate"
parse = "int"
unit = "/min"
min = 18
max = 321
[[device.rule.flag]]
capture = "fast"
name = "spo2_fast"

[[device.rule]]
name = "and"
regex = '^(?P<hdr>ST|US|OL|QT),(?P<w>[-+][0-9.E+]{8,11}) {0,2}(?P<unit>g|kg|lb|PC|%)$'
status_capture = "hdr"
status_accept = ["ST"]
status_flags = { US = "unstable", OL = "overload" }
[[device.rule.reading]]
capture = "w"
type = "body_weight"
parse = "decimal"
scale = 0.001
offset = 0
unit_capture = "unit"
unit_map = { g = "kg", kg = "kg", lb = "[lb_av]" }
min = 0

[[device.rule]]
name = "tanita"
regex = '^\{(?:[^,"]*|"[^"]*")(?:,(?:[^,"]*|"[^"]*"))*?,W(?P<unit>k|p),(?P<w>[0-9]+\.[0-9]+)(?:,(?:[^,"]*|"[^"]*"))*,CS,(?P<cs>[0-9A-Fa-f]{2})$'
[device.rule.checksum]
algorithm = "sum8"
capture = "cs"
exclude_suffix = "CS,"
[[device.rule.reading]]
capture = "w"
type = "body_weight"
unit_capture = "unit"
unit_map = { k = "kg", p = "[lb_av]" }

[[device.rule]]
name = "hex"
regex = '^T=(?P<t>[0-9A-Fa-f ]{1,8}) X=(?P<x>[0-9a-f]{2})$'
[device.rule.checksum]
algorithm = "xor8"
capture = "x"
[[device.rule.reading]]
capture = "t"
type = "body_temperature"
parse = "hex"
scale = 0.1
offset = -40
unit = "Cel"
min = -40
max = 100
"#;

fn config() -> &'static DeviceConfig {
    static CFG: OnceLock<DeviceConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        DeviceConfig::from_toml_str(CONFIG, Path::new("fuzz.toml")).expect("fuzz config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    serial_common::check_decoder(cfg.decoder(), cfg.decoder(), data);
});
