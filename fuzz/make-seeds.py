#!/usr/bin/env python3
"""Rebuilds fuzz/corpus/<target>/seed-<vector-id> from device-drivers/testdata/gatt-vectors.json.

Each GATT vector's payload seeds the fuzz target of its characteristic family. Run from anywhere:
    python3 fuzz/make-seeds.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "device-drivers", "testdata", "gatt-vectors.json")

FAMILY = {
    0x2A35: "gatt_blood_pressure", 0x2A36: "gatt_blood_pressure", 0x2A49: "gatt_blood_pressure",
    0x2A9D: "gatt_weight_bodycomp", 0x2A9E: "gatt_weight_bodycomp", 0x2A9C: "gatt_weight_bodycomp",
    0x2A1C: "gatt_thermometer", 0x2A1D: "gatt_thermometer", 0x2A1E: "gatt_thermometer",
    0x2A5E: "gatt_plx", 0x2A5F: "gatt_plx", 0x2A60: "gatt_plx",
    0x2A18: "gatt_glucose_racp", 0x2A34: "gatt_glucose_racp", 0x2A52: "gatt_glucose_racp",
    0x2A37: "gatt_heart_rate",
}
TIME_DEVINFO = "gatt_time_devinfo"

# Extra seeds that are not vectors: (target, name, hex).
EXTRA = [
    # Beurer BM85 non-conforming BPM (gatt-profiles.md section 11).
    ("gatt_blood_pressure", "beurer-bm85-quirk", "566a0047000000ea07080b121f00003f000000"),
    # A short glucose download: [kind, len, bytes] events (see gatt_glucose_racp.rs).
    ("gatt_glucose_racp", "download-events",
     "00" "0d" "020100e807010f072d005fb011" "01" "04" "06000101"),
]


def main() -> int:
    with open(VECTORS, encoding="utf-8") as f:
        vectors = json.load(f)
    written = 0
    for v in vectors:
        ch = int(v["characteristic"], 16)
        target = FAMILY.get(ch, TIME_DEVINFO)
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "seed-" + v["id"]), "wb") as out:
            out.write(bytes.fromhex(v["hex"]))
        written += 1
    for target, name, hx in EXTRA:
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "seed-" + name), "wb") as out:
            out.write(bytes.fromhex(hx))
        written += 1
    print(f"wrote {written} seeds from {len(vectors)} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
