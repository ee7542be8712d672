#!/usr/bin/env python3
"""Latency of the asme volume driver's Mount and Unmount, measured at the plugin's socket.

    sudo bench/driver_mount.py [-n CYCLES] [FOLDER]

dockerd sends Mount at every container start and Unmount at every stop; this times them
without dockerd or a container in the way, on the socket dockerd itself uses (root's, so run
it as root). A volume of the driver is made over FOLDER (default: a new temporary folder
owned by uid 1234, or `-o owner=` of SUDO_UID), then CYCLES times: Mount with a new ID (the
first one attaches the mapping), a second Mount (a second container: a reference only), and
two Unmounts (the last detaches). The volume is removed at the end; the folder is untouched.

Goal: median first Mount <= 1 ms. Prints medians and 90th percentiles in milliseconds.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("plugin")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def call(conn, endpoint, body):
    """One request; returns its wall time in ms, failing on an error answer."""
    data = json.dumps(body)
    t0 = time.perf_counter_ns()
    conn.request("POST", "/VolumeDriver." + endpoint, data,
                 {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read() or b"{}")
    elapsed = (time.perf_counter_ns() - t0) / 1e6
    if answer.get("Err"):
        sys.exit(f"{endpoint}: {answer['Err']}")
    return elapsed


def docker(*args):
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main():
    args = sys.argv[1:]
    cycles = 200
    if args[:1] == ["-n"]:
        cycles, args = int(args[1]), args[2:]
    if os.geteuid() != 0:
        sys.exit("run as root: the plugin's socket is root's (sudo bench/driver_mount.py)")
    plugin = docker("plugin", "inspect", "-f", "{{.ID}} {{.Enabled}}", "asme").split()
    if plugin[1] != "true":
        sys.exit("the asme plugin is not enabled: asme plugin install")
    exec_root = "/var/run/docker"
    sock = f"{exec_root}/plugins/{plugin[0]}/asme.sock"

    made = None
    if args:
        folder = args[0]
    else:
        made = tempfile.mkdtemp(prefix="asme-bench-mount-")
        os.chown(made, 1234, 1234)
        folder = made
    name = f"asme-bench-mount-{os.getpid()}"
    docker("volume", "create", "-d", "asme", "-o", f"source={folder}", name)
    first, second, unmount, last = [], [], [], []
    try:
        conn = UnixConnection(sock)
        for i in range(cycles):
            first.append(call(conn, "Mount", {"Name": name, "ID": f"bench-{i}-a"}))
            second.append(call(conn, "Mount", {"Name": name, "ID": f"bench-{i}-b"}))
            unmount.append(call(conn, "Unmount", {"Name": name, "ID": f"bench-{i}-b"}))
            last.append(call(conn, "Unmount", {"Name": name, "ID": f"bench-{i}-a"}))
    finally:
        docker("volume", "rm", name)
        if made:
            os.rmdir(made)

    def row(label, xs, goal=""):
        p90 = statistics.quantiles(xs, n=10)[-1]
        print(f"{label:<38} median {statistics.median(xs):6.3f} ms   p90 {p90:6.3f} ms{goal}")

    print(f"asme volume driver, {cycles} cycles over {folder}")
    row("Mount, first (attaches the mapping)", first, "   (goal: median <= 1 ms)")
    row("Mount, second (a reference)", second)
    row("Unmount, not the last", unmount)
    row("Unmount, last (detaches)", last)


if __name__ == "__main__":
    main()
