#!/usr/bin/python3
"""A fake BlueZ (org.bluez) for vitalgate's tests: TEST ONLY, never shipped.

It serves the BlueZ D-Bus API (adapter, devices, GATT services/characteristics, AgentManager1)
on the bus named by DBUS_SYSTEM_BUS_ADDRESS (a private dbus-daemon started by the test), so the
*unmodified* btleplug / bluez-async code in the agent scans, connects, reads, writes, subscribes
and receives indications through it. It also serves org.freedesktop.timedate1 (NTPSynchronized)
so tests can say whether the gateway's clock is synchronised.

Facts the agent's D-Bus stack depends on (learned the hard way):
- bluez-async finds services / characteristics by `Introspect` child nodes
  (`serviceXXXX/charYYYY`), not by GetManagedObjects: every GATT object is exported at its path.
- A missing or mistyped property makes a device or adapter silently invisible: adapter
  `Modalias` (usb:vXXXXpXXXXdXXXX), `AddressType`, device `RSSI` as int16, `Paired`,
  `Trusted`, `Blocked`, `LegacyPairing`, `ServicesResolved`.
- BlueZ emits PropertiesChanged(Value) for every ReadValue too: so does this fake.

Devices are described by JSON (see README.md): profile, address, DIS strings, clock offset,
stored records, RACP records, scripted failures. The test drives it with JSON lines on stdin
({"cmd": ...}) and reads JSON events on stdout ({"ev": ...}), one per line.
"""

import json
import os
import sys
import time
import random
import datetime

import dbus
import dbus.service
import dbus.mainloop.glib
from gi.repository import GLib

BLUEZ = "org.bluez"
OM = "org.freedesktop.DBus.ObjectManager"
PROPS = "org.freedesktop.DBus.Properties"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
GSVC = "org.bluez.GattService1"
GCHR = "org.bluez.GattCharacteristic1"
AGENT_MGR = "org.bluez.AgentManager1"
AGENT = "org.bluez.Agent1"
ADAPTER_PATH = "/org/bluez/hci0"


def uuid128(u):
    u = u.lower()
    if len(u) == 4:
        return "0000%s-0000-1000-8000-00805f9b34fb" % u
    return u


def emit(ev, **kw):
    kw["ev"] = ev
    kw["t"] = time.time()
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def ay(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


class Failed(dbus.DBusException):
    _dbus_error_name = "org.bluez.Error.Failed"


class NotPermitted(dbus.DBusException):
    _dbus_error_name = "org.bluez.Error.NotPermitted"


class NotReady(dbus.DBusException):
    _dbus_error_name = "org.bluez.Error.NotReady"


class AuthFailed(dbus.DBusException):
    _dbus_error_name = "org.bluez.Error.AuthenticationFailed"


class PropObject(dbus.service.Object):
    """An exported object with org.freedesktop.DBus.Properties."""

    def __init__(self, emu, path, iface):
        self.emu = emu
        self.path = path
        self.iface = iface
        self.props = {}
        self.exported = False

    def export(self):
        if not self.exported:
            dbus.service.Object.__init__(self, self.emu.bus, self.path)
            self.exported = True

    def unexport(self):
        if self.exported:
            try:
                self.remove_from_connection()
            except Exception:
                pass
            self.exported = False

    def set(self, name, value, signal=True):
        self.props[name] = value
        if signal and self.exported:
            self.PropertiesChanged(self.iface, {name: value}, [])

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        if iface != self.iface or name not in self.props:
            raise dbus.DBusException("no such property " + name,
                                     name="org.freedesktop.DBus.Error.InvalidArgs")
        return self.props[name]

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        if iface != self.iface:
            return dbus.Dictionary({}, signature="sv")
        return dbus.Dictionary(self.props, signature="sv")

    @dbus.service.method(PROPS, in_signature="ssv", out_signature="")
    def Set(self, iface, name, value):
        self.on_set(name, value)

    def on_set(self, name, value):
        raise dbus.DBusException("read-only", name="org.freedesktop.DBus.Error.PropertyReadOnly")

    @dbus.service.signal(PROPS, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass


class Root(dbus.service.Object):
    def __init__(self, emu):
        dbus.service.Object.__init__(self, emu.bus, "/")
        self.emu = emu

    @dbus.service.method(OM, out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        out = dbus.Dictionary({}, signature="oa{sa{sv}}")
        for obj in self.emu.all_objects():
            out[dbus.ObjectPath(obj.path)] = {obj.iface: dbus.Dictionary(obj.props, signature="sv")}
        return out

    @dbus.service.signal(OM, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, ifaces):
        pass

    @dbus.service.signal(OM, signature="oas")
    def InterfacesRemoved(self, path, ifaces):
        pass


class AgentManager(dbus.service.Object):
    def __init__(self, emu):
        dbus.service.Object.__init__(self, emu.bus, "/org/bluez")
        self.emu = emu

    @dbus.service.method(AGENT_MGR, in_signature="os", out_signature="", sender_keyword="sender")
    def RegisterAgent(self, path, capability, sender=None):
        self.emu.agents[sender] = (str(path), str(capability))
        self.emu.last_agent = sender
        emit("agent_registered", capability=str(capability))

    @dbus.service.method(AGENT_MGR, in_signature="o", out_signature="", sender_keyword="sender")
    def UnregisterAgent(self, path, sender=None):
        self.emu.agents.pop(sender, None)

    @dbus.service.method(AGENT_MGR, in_signature="o", out_signature="", sender_keyword="sender")
    def RequestDefaultAgent(self, path, sender=None):
        self.emu.last_agent = sender


class Adapter(PropObject):
    def __init__(self, emu, address):
        PropObject.__init__(self, emu, ADAPTER_PATH, ADAPTER)
        self.props = {
            "Address": dbus.String(address),
            "AddressType": dbus.String("public"),
            "Name": dbus.String("vitalgate-emu"),
            "Alias": dbus.String("vitalgate-emu"),
            "Class": dbus.UInt32(0),
            "Powered": dbus.Boolean(True),
            "Discoverable": dbus.Boolean(False),
            "Pairable": dbus.Boolean(True),
            "Discovering": dbus.Boolean(False),
            "UUIDs": dbus.Array([], signature="s"),
            "Modalias": dbus.String("usb:v1D6Bp0246d0541"),
        }
        self.filter_uuids = []
        self.discovery_owners = set()

    def on_set(self, name, value):
        if name == "Powered":
            self.emu.set_powered(bool(value))
        else:
            PropObject.on_set(self, name, value)

    @dbus.service.method(ADAPTER, in_signature="", out_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender=None):
        if not self.props["Powered"]:
            raise NotReady("Resource Not Ready")
        self.discovery_owners.add(sender)
        self.emu.stats["start_discovery"] += 1
        self.emu.stalled = False
        if not self.props["Discovering"]:
            self.set("Discovering", dbus.Boolean(True))
        emit("discovery", on=True, filter=self.filter_uuids)

    @dbus.service.method(ADAPTER, in_signature="", out_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender=None):
        self.discovery_owners.discard(sender)
        if not self.discovery_owners and self.props["Discovering"]:
            self.set("Discovering", dbus.Boolean(False))
        emit("discovery", on=False)

    @dbus.service.method(ADAPTER, in_signature="a{sv}", out_signature="")
    def SetDiscoveryFilter(self, f):
        self.filter_uuids = [str(u).lower() for u in f.get("UUIDs", [])]

    @dbus.service.method(ADAPTER, in_signature="", out_signature="as")
    def GetDiscoveryFilters(self):
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]

    @dbus.service.method(ADAPTER, in_signature="o", out_signature="")
    def RemoveDevice(self, path):
        dev = self.emu.by_path.get(str(path))
        if dev:
            self.emu.remove_device_object(dev)


class Characteristic(PropObject):
    def __init__(self, dev, service_path, path, uuid, flags):
        PropObject.__init__(self, dev.emu, path, GCHR)
        self.dev = dev
        self.uuid = uuid
        self.props = {
            "UUID": dbus.String(uuid128(uuid)),
            "Service": dbus.ObjectPath(service_path),
            "Value": ay(b""),
            "Flags": dbus.Array(flags, signature="s"),
            "Notifying": dbus.Boolean(False),
            "MTU": dbus.UInt16(247),
        }

    def check(self):
        if not self.dev.connected:
            raise Failed("Not connected")

    @dbus.service.method(GCHR, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        self.check()
        self.dev.check_auth(self.uuid)
        value = self.dev.read(self.uuid)
        # Like BlueZ: a read also updates the cached Value (PropertiesChanged).
        self.set("Value", ay(value))
        return ay(value)

    @dbus.service.method(GCHR, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        self.check()
        self.dev.check_auth(self.uuid)
        self.dev.write(self, bytes(bytearray(value)))

    @dbus.service.method(GCHR, in_signature="", out_signature="")
    def StartNotify(self):
        self.check()
        self.dev.check_auth(self.uuid)
        if not self.props["Notifying"]:
            self.set("Notifying", dbus.Boolean(True))
        self.dev.on_notify_enabled(self)

    @dbus.service.method(GCHR, in_signature="", out_signature="")
    def StopNotify(self):
        if self.props["Notifying"]:
            self.set("Notifying", dbus.Boolean(False))

    def notify(self, value):
        if self.exported and self.props["Notifying"]:
            self.set("Value", ay(value))
            self.emu.stats["notifications"] += 1
            return True
        return False


class Service(PropObject):
    def __init__(self, dev, path, uuid):
        PropObject.__init__(self, dev.emu, path, GSVC)
        self.props = {
            "UUID": dbus.String(uuid128(uuid)),
            "Device": dbus.ObjectPath(dev.path),
            "Primary": dbus.Boolean(True),
            "Includes": dbus.Array([], signature="o"),
        }


PROFILES = {
    # profile: (service, [(char, flags)])
    "blood-pressure": ("1810", [("2a35", ["indicate"]), ("2a36", ["notify"]), ("2a49", ["read"])]),
    "weight-scale": ("181d", [("2a9d", ["indicate"]), ("2a9e", ["read"])]),
    "thermometer": ("1809", [("2a1c", ["indicate"]), ("2a1d", ["read"])]),
    "pulse-oximeter": ("1822", [("2a5e", ["indicate"]), ("2a5f", ["notify"]), ("2a60", ["read"]),
                                ("2a52", ["write", "indicate"])]),
    "glucose": ("1808", [("2a18", ["notify"]), ("2a34", ["notify"]), ("2a51", ["read"]),
                         ("2a52", ["write", "indicate"])]),
    "heart-rate": ("180d", [("2a37", ["notify"])]),
}
MEASUREMENT = {"blood-pressure": "2a35", "weight-scale": "2a9d", "thermometer": "2a1c",
               "pulse-oximeter": "2a5e", "glucose": "2a18", "heart-rate": "2a37"}
DIS_CHARS = {"system_id": "2a23", "model": "2a24", "serial": "2a25", "firmware": "2a26",
             "hardware": "2a27", "software": "2a28", "manufacturer": "2a29"}


def encode_cts(t):
    # Current Time: Date Time, day of week (1 = Monday), fractions256, adjust reason.
    return bytes([t.year & 0xFF, t.year >> 8, t.month, t.day, t.hour, t.minute, t.second,
                  t.isoweekday(), 0, 0])


def decode_dt(b):
    y = b[0] | (b[1] << 8)
    return datetime.datetime(y, b[2], b[3], b[4], b[5], b[6])


class Device(PropObject):
    def __init__(self, emu, spec):
        self.spec = spec
        addr = spec["address"].upper()
        path = ADAPTER_PATH + "/dev_" + addr.replace(":", "_")
        PropObject.__init__(self, emu, path, DEVICE)
        self.address = addr
        self.profile = spec.get("profile")
        uuids = [uuid128(u) for u in spec.get("uuids", [PROFILES[self.profile][0]] if self.profile else [])]
        self.adv_uuids = uuids
        self.props = {
            "Address": dbus.String(addr),
            "AddressType": dbus.String(spec.get("address_type", "public")),
            "Name": dbus.String(spec.get("name", "dev-" + addr[-5:].replace(":", ""))),
            "Alias": dbus.String(spec.get("name", "dev-" + addr[-5:].replace(":", ""))),
            "Paired": dbus.Boolean(bool(spec.get("paired", False))),
            "Bonded": dbus.Boolean(bool(spec.get("paired", False))),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "Connected": dbus.Boolean(False),
            "ServicesResolved": dbus.Boolean(False),
            "RSSI": dbus.Int16(spec.get("rssi", -60)),
            "UUIDs": dbus.Array(uuids, signature="s"),
            "Adapter": dbus.ObjectPath(ADAPTER_PATH),
        }
        self.connected = False
        self.connect_failures = int(spec.get("connect_failures", 0))
        self.connect_hang = bool(spec.get("connect_hang", False))
        self.requires_bond = bool(spec.get("requires_bond", False))
        self.pairing = spec.get("pairing", "just_works")
        self.passkey = int(spec.get("passkey", 0))
        # Device clock = real local time + offset (seconds).
        self.clock_offset = float(spec.get("clock_offset_s", 0))
        self.clock_writable = bool(spec.get("clock_writable", True))
        self.has_cts = bool(spec.get("cts", True))
        self.stored = list(spec.get("stored", []))  # hex payloads indicated after subscribe
        self.keep_stored = bool(spec.get("keep_stored", True))
        self.racp_records = [tuple(r) for r in spec.get("racp_records", [])]  # (seq, hex)
        self.disconnect_after_records = spec.get("disconnect_after_records")
        self.record_interval_ms = int(spec.get("record_interval_ms", 2))
        self.gatt = []
        self.chars = {}
        self.racp_timer = None
        self.stored_timer = None
        self.generation = 0

    # --- GATT database ---
    def build_gatt(self):
        self.gatt = []
        self.chars = {}
        services = []
        if self.profile:
            services.append(PROFILES[self.profile])
        services.append(("180a", [(DIS_CHARS[k], ["read"]) for k in DIS_CHARS
                                  if k in self.spec.get("dis", {})]))
        if self.has_cts:
            services.append(("1805", [("2a2b", ["read", "write", "notify"])]))
        h = 0x10
        for (su, chars) in services:
            spath = "%s/service%04x" % (self.path, h)
            svc = Service(self, spath, su)
            self.gatt.append(svc)
            h += 1
            for (cu, flags) in chars:
                cpath = "%s/char%04x" % (spath, h)
                h += 2
                ch = Characteristic(self, spath, cpath, cu, flags)
                self.gatt.append(ch)
                self.chars[cu] = ch

    def now_device(self):
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(seconds=self.clock_offset)

    def check_auth(self, uuid):
        if self.requires_bond and not self.props["Paired"] and uuid not in ("2a23", "2a24", "2a25", "2a26", "2a27", "2a28", "2a29"):
            self.emu.stats["auth_errors"] += 1
            raise NotPermitted("Insufficient Authentication (0x05)")

    def read(self, uuid):
        dis = self.spec.get("dis", {})
        for k, cu in DIS_CHARS.items():
            if cu == uuid:
                v = dis.get(k, "")
                return bytes.fromhex(v) if k == "system_id" else v.encode()
        if uuid == "2a2b":
            emit("cts_read", address=self.address)
            return encode_cts(self.now_device())
        if uuid == "2a49":
            return bytes([0x00, 0x00])
        if uuid == "2a9e":
            return bytes([0x06, 0, 0, 0])
        if uuid == "2a1d":
            return bytes([2])
        if uuid == "2a51":
            return bytes([0, 0])
        if uuid == "2a60":
            return bytes([0, 0])
        raise Failed("Not supported")

    def write(self, ch, value):
        emit("write", address=self.address, char=ch.uuid, value=value.hex())
        if ch.uuid == "2a2b":
            if not self.clock_writable:
                raise NotPermitted("Write Not Permitted")
            t = decode_dt(value)
            self.clock_offset = (t - datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)).total_seconds()
            emit("clock_set", address=self.address, value=t.isoformat(), offset_s=self.clock_offset)
            return
        if ch.uuid == "2a52":
            if not ch.props["Notifying"]:
                raise Failed("Operation failed with ATT error: 0xfd")
            self.racp(ch, value)
            return
        raise Failed("Not supported")

    def racp(self, ch, v):
        op = v[0]
        if op == 1:  # report stored records
            if v[1] == 1:
                recs = list(self.racp_records)
                start = None
            elif v[1] == 3 and v[2] == 1:
                start = v[3] | (v[4] << 8)
                recs = [r for r in self.racp_records if r[0] >= start]
            else:
                GLib.idle_add(self.indicate_racp, ch, bytes([6, 0, 1, 4]))
                return
            emit("racp_report", address=self.address, start=start, count=len(recs))
            self.stream_records(ch, recs)
        elif op == 2:  # delete
            if v[1] == 4 and v[2] == 1:
                a = v[3] | (v[4] << 8)
                b = v[5] | (v[6] << 8)
                before = len(self.racp_records)
                self.racp_records = [r for r in self.racp_records if not (a <= r[0] <= b)]
                emit("racp_delete", address=self.address, first=a, last=b,
                     deleted=before - len(self.racp_records))
            elif v[1] == 1:
                emit("racp_delete", address=self.address, all=True, deleted=len(self.racp_records))
                self.racp_records = []
            GLib.idle_add(self.indicate_racp, ch, bytes([6, 0, 2, 1]))
        elif op == 3:  # abort
            self.cancel_timers()
            GLib.idle_add(self.indicate_racp, ch, bytes([6, 0, 3, 1]))
        elif op == 4:
            n = len(self.racp_records)
            GLib.idle_add(self.indicate_racp, ch, bytes([5, 0, n & 0xFF, n >> 8]))
        else:
            GLib.idle_add(self.indicate_racp, ch, bytes([6, 0, op, 2]))

    def indicate_racp(self, ch, value):
        ch.notify(value)
        return False

    def stream_records(self, racp_ch, recs):
        meas = self.chars.get(MEASUREMENT[self.profile])
        gen = self.generation
        state = {"i": 0}

        def step():
            if gen != self.generation or not self.connected:
                return False
            i = state["i"]
            if self.disconnect_after_records is not None and i >= int(self.disconnect_after_records):
                self.disconnect_after_records = None
                emit("scripted_disconnect", address=self.address, after=i)
                self.drop_connection()
                return False
            if i >= len(recs):
                racp_ch.notify(bytes([6, 0, 1, 1 if recs else 6]))
                emit("racp_done", address=self.address, sent=i)
                self.racp_timer = None
                return False
            meas.notify(bytes.fromhex(recs[i][1]))
            state["i"] = i + 1
            return True

        self.racp_timer = GLib.timeout_add(self.record_interval_ms, step)

    def on_notify_enabled(self, ch):
        emit("subscribed", address=self.address, char=ch.uuid)
        if self.profile and ch.uuid == MEASUREMENT[self.profile] and self.stored and self.profile not in ("glucose",):
            gen = self.generation
            recs = list(self.stored)
            state = {"i": 0}

            def step():
                if gen != self.generation or not self.connected:
                    return False
                if state["i"] >= len(recs):
                    if not self.keep_stored:
                        self.stored = []
                    self.stored_timer = None
                    return False
                ch.notify(bytes.fromhex(recs[state["i"]]))
                state["i"] += 1
                return True

            self.stored_timer = GLib.timeout_add(int(self.spec.get("stored_interval_ms", 20)), step)

    def cancel_timers(self):
        for t in (self.racp_timer, self.stored_timer):
            if t:
                GLib.source_remove(t)
        self.racp_timer = None
        self.stored_timer = None

    # --- connection ---
    @dbus.service.method(DEVICE, in_signature="", out_signature="",
                         async_callbacks=("ok", "err"))
    def Connect(self, ok, err):
        emit("connect_request", address=self.address)
        self.emu.stats["connects"] += 1
        if not self.emu.adapter.props["Powered"]:
            err(NotReady("Resource Not Ready"))
            return
        if self.connect_hang:
            emit("connect_hang", address=self.address)
            return  # never answer: the caller's D-Bus timeout (or its own) fires
        if self.connect_failures > 0:
            self.connect_failures -= 1
            emit("connect_failed", address=self.address)
            GLib.timeout_add(20, lambda: (err(Failed("le-connection-abort-by-local")), False)[1])
            return
        if self.connected:
            ok()
            return

        def done():
            self.establish()
            ok()
            GLib.timeout_add(5, self.resolve_services, self.generation)
            return False

        GLib.timeout_add(10, done)

    def establish(self):
        self.connected = True
        self.generation += 1
        self.set("Connected", dbus.Boolean(True))
        emit("connected", address=self.address)

    def resolve_services(self, gen):
        if gen != self.generation or not self.connected:
            return False
        self.build_gatt()
        for obj in self.gatt:
            obj.export()
            self.emu.root.InterfacesAdded(obj.path, {obj.iface: dbus.Dictionary(obj.props, signature="sv")})
        self.set("ServicesResolved", dbus.Boolean(True))
        return False

    @dbus.service.method(DEVICE, in_signature="", out_signature="")
    def Disconnect(self):
        emit("disconnect_request", address=self.address)
        self.drop_connection()

    def drop_connection(self):
        self.cancel_timers()
        was = self.connected
        self.connected = False
        self.generation += 1
        if self.props["ServicesResolved"]:
            self.set("ServicesResolved", dbus.Boolean(False))
        for obj in reversed(self.gatt):
            if obj.exported:
                obj.unexport()
                self.emu.root.InterfacesRemoved(obj.path, [obj.iface])
        self.gatt = []
        self.chars = {}
        if self.props["Connected"]:
            self.set("Connected", dbus.Boolean(False))
        if was:
            emit("disconnected", address=self.address)

    @dbus.service.method(DEVICE, in_signature="", out_signature="",
                         async_callbacks=("ok", "err"))
    def Pair(self, ok, err):
        emit("pair_request", address=self.address, mode=self.pairing)
        if self.props["Paired"]:
            err(dbus.DBusException("Already Exists", name="org.bluez.Error.AlreadyExists"))
            return
        agent = self.emu.agents.get(self.emu.last_agent)

        def paired():
            self.set("Paired", dbus.Boolean(True))
            self.set("Bonded", dbus.Boolean(True))
            emit("paired", address=self.address)
            ok()

        if self.pairing == "passkey":
            if not agent:
                err(AuthFailed("Authentication Failed"))
                return
            proxy = self.emu.bus.get_object(self.emu.last_agent, agent[0])

            def reply(pk):
                if int(pk) == self.passkey:
                    paired()
                else:
                    emit("pair_failed", address=self.address, reason="wrong passkey")
                    err(AuthFailed("Authentication Failed"))

            def error(e):
                emit("pair_failed", address=self.address, reason=str(e))
                err(AuthFailed("Authentication Rejected"))

            proxy.RequestPasskey(dbus.ObjectPath(self.path), dbus_interface=AGENT,
                                 reply_handler=reply, error_handler=error, timeout=30)
            return
        GLib.timeout_add(20, lambda: (paired(), False)[1])

    @dbus.service.method(DEVICE, in_signature="", out_signature="")
    def CancelPairing(self):
        pass

    def on_set(self, name, value):
        if name == "Trusted":
            self.set("Trusted", dbus.Boolean(bool(value)))
            emit("trusted", address=self.address, value=bool(value))
        else:
            PropObject.on_set(self, name, value)

    # --- advertising ---
    def advertise(self):
        a = self.emu.adapter
        if not a.props["Powered"] or not a.props["Discovering"] or self.emu.stalled:
            return False
        if a.filter_uuids and not any(u in a.filter_uuids for u in self.adv_uuids):
            return False
        self.emu.stats["adverts"] += 1
        rssi = dbus.Int16(int(self.spec.get("rssi", -60)) + random.randint(-5, 5))
        if not self.exported:
            self.props["RSSI"] = rssi
            self.export()
            self.emu.root.InterfacesAdded(self.path, {DEVICE: dbus.Dictionary(self.props, signature="sv")})
        else:
            if rssi == self.props["RSSI"]:
                rssi = dbus.Int16(rssi + 1)
            self.set("RSSI", rssi)
        return True


class TimeDate(dbus.service.Object):
    def __init__(self, bus, emu):
        dbus.service.Object.__init__(self, bus, "/org/freedesktop/timedate1")
        self.emu = emu

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        if name == "NTPSynchronized":
            return dbus.Boolean(self.emu.ntp_synced)
        if name == "NTP":
            return dbus.Boolean(True)
        raise dbus.DBusException("no such property", name="org.freedesktop.DBus.Error.InvalidArgs")

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return {"NTPSynchronized": dbus.Boolean(self.emu.ntp_synced), "NTP": dbus.Boolean(True)}


class Emulator:
    def __init__(self, scenario):
        self.address = os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
        self.scenario = scenario
        self.agents = {}
        self.last_agent = None
        self.stalled = False
        self.ntp_synced = bool(scenario.get("ntp_synchronized", True))
        self.stats = {k: 0 for k in ("adverts", "notifications", "connects", "start_discovery",
                                     "auth_errors")}
        self.devices = {}
        self.by_path = {}
        self.timers = {}
        self.bus = None
        self.time_bus = dbus.bus.BusConnection(self.address)
        self.time_name = dbus.service.BusName("org.freedesktop.timedate1", self.time_bus)
        self.timedate = TimeDate(self.time_bus, self)
        self.own_names = set()
        self.start_monitor()
        self.start_bluez()
        for spec in scenario.get("devices", []):
            self.add_device(spec)

    def start_bluez(self):
        self.bus = dbus.bus.BusConnection(self.address)
        self.root = Root(self)
        self.agent_mgr = AgentManager(self)
        self.adapter = Adapter(self, self.scenario.get("adapter_address", "00:1A:7D:DA:71:13"))
        self.adapter.export()
        self.name = dbus.service.BusName(BLUEZ, self.bus)
        self.own_names.add(self.bus.get_unique_name())
        emit("bluez_up", unique=self.bus.get_unique_name())

    def stop_bluez(self):
        for dev in self.devices.values():
            dev.cancel_timers()
            dev.connected = False
            dev.props["Connected"] = dbus.Boolean(False)
            dev.props["ServicesResolved"] = dbus.Boolean(False)
            for obj in dev.gatt:
                obj.exported = False
            dev.gatt = []
            dev.exported = False
        self.adapter.exported = False
        self.bus.close()
        self.bus = None
        self.agents = {}
        emit("bluez_down")

    def all_objects(self):
        objs = [self.adapter] if self.adapter.exported else []
        for d in self.devices.values():
            if d.exported:
                objs.append(d)
                objs.extend(o for o in d.gatt if o.exported)
        return objs

    def add_device(self, spec):
        dev = Device(self, spec)
        self.devices[dev.address] = dev
        self.by_path[dev.path] = dev
        interval = spec.get("advertise_ms")
        if interval:
            self.start_advertising(dev, int(interval))
        return dev

    def start_advertising(self, dev, interval):
        if dev.address in self.timers:
            GLib.source_remove(self.timers.pop(dev.address))

        def tick():
            if self.bus is not None and not dev.connected:
                dev.advertise()
            return True

        # Spread the first adverts so 2,000 devices do not all fire at once.
        def first():
            tick()
            self.timers[dev.address] = GLib.timeout_add(interval, tick)
            return False

        self.timers[dev.address] = GLib.timeout_add(random.randint(1, max(1, interval)), first)

    def remove_device_object(self, dev):
        if dev.exported:
            dev.drop_connection()
            dev.unexport()
            self.root.InterfacesRemoved(dev.path, [DEVICE])

    def set_powered(self, on):
        a = self.adapter
        if not on:
            for d in self.devices.values():
                d.drop_connection()
            if a.props["Discovering"]:
                a.set("Discovering", dbus.Boolean(False))
            a.discovery_owners.clear()
        a.set("Powered", dbus.Boolean(on))
        emit("powered", on=on)

    def dev(self, c):
        return self.devices[c["address"].upper()]

    def command(self, c):
        cmd = c["cmd"]
        if cmd == "add_device":
            self.add_device(c["device"])
        elif cmd == "advertise":
            for _ in range(int(c.get("count", 1))):
                self.dev(c).advertise()
        elif cmd == "advertise_every":
            self.start_advertising(self.dev(c), int(c["ms"]))
        elif cmd == "stop_advertising":
            t = self.timers.pop(c["address"].upper(), None)
            if t:
                GLib.source_remove(t)
        elif cmd == "measure":
            d = self.dev(c)
            ch = d.chars.get(c.get("char", MEASUREMENT.get(d.profile, "")))
            sent = d.connected and ch is not None and ch.notify(bytes.fromhex(c["payload"]))
            # "store": the device also keeps it in memory (replayed on every connection), as
            # an indication whose confirmation may never come.
            if not sent or c.get("store"):
                d.stored.append(c["payload"])
            emit("notified" if sent else "stored", address=d.address, count=len(d.stored))
        elif cmd == "set_stored":
            self.dev(c).stored = list(c["stored"])
        elif cmd == "set":
            d = self.dev(c)
            for k, v in c["values"].items():
                setattr(d, k, v)
        elif cmd == "disconnect":
            self.dev(c).drop_connection()
        elif cmd == "restart_bluez":
            self.stop_bluez()
            GLib.timeout_add(int(c.get("down_ms", 300)), lambda: (self.start_bluez(), False)[1])
        elif cmd == "power":
            self.set_powered(bool(c["on"]))
        elif cmd == "stall":
            self.stalled = True
            emit("stalled")
        elif cmd == "forget_bond":
            d = self.dev(c)
            d.props["Paired"] = dbus.Boolean(False)
            d.props["Bonded"] = dbus.Boolean(False)
            if d.exported:
                d.set("Paired", dbus.Boolean(False))
        elif cmd == "ntp":
            self.ntp_synced = bool(c["synced"])
        elif cmd == "stats":
            out = dict(self.stats)
            out["connected"] = [d.address for d in self.devices.values() if d.connected]
            out["exported_devices"] = sum(1 for d in self.devices.values() if d.exported)
            out["racp_records"] = {d.address: len(d.racp_records) for d in self.devices.values() if d.racp_records}
            own = {self.time_bus.get_unique_name(), self.monitor.get_unique_name()}
            own.update(self.own_names)
            out["client_match_rules"] = {k: v for k, v in self.monitor_counts.items() if k not in own}
            if c.get("client"):
                out["match_rules"] = self.match_rules(c["client"])
            emit("stats", **out)
            return
        elif cmd == "clients":
            emit("clients", owners=[str(o) for o in self.adapter.discovery_owners])
            return
        elif cmd == "quit":
            loop.quit()
        emit("ack", cmd=cmd, id=c.get("id"))

    def match_rules(self, client):
        """Match rules a client added and did not remove (AddMatch - RemoveMatch, as seen by the
        monitor connection: Debian's dbus-daemon has no Debug.Stats interface)."""
        return self.monitor_counts.get(client, 0)

    def start_monitor(self):
        self.monitor_counts = {}
        self.monitor = dbus.bus.BusConnection(self.address)
        rules = ["type='method_call',interface='org.freedesktop.DBus',member='AddMatch'",
                 "type='method_call',interface='org.freedesktop.DBus',member='RemoveMatch'"]
        self.monitor.call_blocking("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                   "org.freedesktop.DBus.Monitoring", "BecomeMonitor", "asu",
                                   (rules, dbus.UInt32(0)))

        def on_msg(conn, msg):
            member = msg.get_member()
            sender = msg.get_sender()
            if member == "AddMatch":
                self.monitor_counts[sender] = self.monitor_counts.get(sender, 0) + 1
            elif member == "RemoveMatch":
                self.monitor_counts[sender] = self.monitor_counts.get(sender, 0) - 1

        self.monitor.add_message_filter(on_msg)


def on_stdin(fd, cond):
    line = sys.stdin.readline()
    if not line:
        loop.quit()
        return False
    line = line.strip()
    if line:
        try:
            emu.command(json.loads(line))
        except Exception as e:  # a bad command is the test's bug: say so, keep serving
            emit("error", message="%s: %s" % (type(e).__name__, e), line=line)
    return True


if __name__ == "__main__":
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    scenario = {}
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            scenario = json.load(f)
    random.seed(scenario.get("seed", 1))
    loop = GLib.MainLoop()
    emu = Emulator(scenario)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
    emit("ready")
    loop.run()
