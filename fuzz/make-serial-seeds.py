#!/usr/bin/env python3
"""Writes the serial fuzz seed corpus from the public vectors.

fuzz/corpus/serial_<target>/seed-<vector-id> = the vector's input bytes. Run from anywhere:
    python3 fuzz/make-serial-seeds.py
Seeds are committed (git add -f: .gitignore keeps generated corpus entries out).
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "device-drivers", "testdata", "serial-vectors.json")

TARGETS = {
    "nonin-": ["serial_nonin"],
    "masimo-": ["serial_masimo"],
    "tanita-": ["serial_tanita", "serial_generic"],  # the generic target has a Tanita rule
    "philips-": ["serial_philips"],
    "generic-line": ["serial_generic"],
}


def input_bytes(v):
    s = v["input"]
    if v.get("input_encoding") == "hex":
        return bytes.fromhex(s)
    return s.encode("latin-1")


def main():
    with open(VECTORS, encoding="utf-8") as f:
        doc = json.load(f)
    written = 0
    for v in doc["vectors"]:
        for prefix, targets in TARGETS.items():
            if not v["protocol"].startswith(prefix):
                continue
            for t in targets:
                d = os.path.join(HERE, "corpus", t)
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "seed-" + v["id"]), "wb") as out:
                    out.write(input_bytes(v))
                written += 1
    print(f"wrote {written} seeds")


if __name__ == "__main__":
    main()
