#!/usr/bin/python3
"""A minimal org.bluez for `vitalgate doctor` tests: one adapter (/org/bluez/hci0) on the bus
named by DBUS_SYSTEM_BUS_ADDRESS, exported through org.freedesktop.DBus.ObjectManager.
Usage: fake_bluez.py powered|unpowered|none   (prints "ready" once the name is owned)"""
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

MODE = sys.argv[1] if len(sys.argv) > 1 else "powered"


class Root(dbus.service.Object):
    @dbus.service.method("org.freedesktop.DBus.ObjectManager", out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        objects = {
            dbus.ObjectPath("/org/bluez"): {
                "org.bluez.AgentManager1": dbus.Dictionary({}, signature="sv")
            }
        }
        if MODE != "none":
            objects[dbus.ObjectPath("/org/bluez/hci0")] = {
                "org.bluez.Adapter1": dbus.Dictionary(
                    {
                        "Address": dbus.String("00:1A:7D:DA:71:13"),
                        "Powered": dbus.Boolean(MODE == "powered"),
                    },
                    signature="sv",
                )
            }
        return objects


DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
name = dbus.service.BusName("org.bluez", bus)
Root(bus, "/")
print("ready", flush=True)
GLib.MainLoop().run()
