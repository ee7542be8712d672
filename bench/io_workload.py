# The in-container half of bench/io.sh: one workload on the bind mount /w, each phase timed
# here with time.perf_counter, so container start-up is not part of any figure.
#
#   python3 -c "$(cat bench/io_workload.py)" small N      create, stat, read, delete N files
#   python3 -c "$(cat bench/io_workload.py)" bigwrite MIB  write /w/big, fsync
#   python3 -c "$(cat bench/io_workload.py)" bigread MIB   read /w/big (caches dropped by host)
#
# Prints one "NAME VALUE" line per figure: first "mount idmapped|plain" for /w, then the
# phases in milliseconds.
import os
import stat
import subprocess
import sys
import time

ROOT = "/w"
FOLDERS = 20


def mount_kind():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == ROOT:
                return "idmapped" if "idmapped" in fields[5].split(",") else "plain"
    sys.exit(f"io_workload: {ROOT} is not a mount point")


def report(name, t0):
    print(f"{name} {(time.perf_counter() - t0) * 1000:.1f}", flush=True)


def small(n):
    top = f"{ROOT}/small"
    data = b"x" * 1024
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    subprocess.run(["rm", "--version"], check=True, stdout=subprocess.DEVNULL)  # warm rm

    t0 = time.perf_counter()
    os.mkdir(top)
    folders = [f"{top}/d{d:02}" for d in range(FOLDERS)]
    for folder in folders:
        os.mkdir(folder)
    for i in range(n):
        fd = os.open(f"{folders[i * FOLDERS // n]}/f{i:06}", flags, 0o644)
        if os.write(fd, data) != len(data):
            sys.exit("io_workload: short write")
        os.close(fd)
    report("create", t0)
    os.sync()  # untimed: the next phases should not race the write-back of this one

    t0 = time.perf_counter()
    files = []
    uids = 0
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)  # one lstat per entry
                uids += st.st_uid
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                else:
                    files.append(entry.path)
    report("stat", t0)
    if len(files) != n:
        sys.exit(f"io_workload: stat walk found {len(files)} files, not {n}")

    t0 = time.perf_counter()
    total = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        while chunk := os.read(fd, 4096):
            total += len(chunk)
        os.close(fd)
    report("read", t0)
    if total != n * len(data):
        sys.exit(f"io_workload: read {total} bytes, not {n * len(data)}")

    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", top], check=True)
    report("delete", t0)


def bigwrite(mib):
    buf = os.urandom(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(f"{ROOT}/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(mib):
        if os.write(fd, buf) != len(buf):
            sys.exit("io_workload: short write")
    os.fsync(fd)
    os.close(fd)
    report("bigwrite", t0)


def bigread(mib):
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(f"{ROOT}/big", os.O_RDONLY)
    total = 0
    while got := os.readv(fd, [buf]):
        total += got
    os.close(fd)
    report("bigread", t0)
    if total != mib << 20:
        sys.exit(f"io_workload: read {total} bytes, not {mib << 20}")


def main():
    phase, count = sys.argv[1], int(sys.argv[2])
    print(f"mount {mount_kind()}", flush=True)
    {"small": small, "bigwrite": bigwrite, "bigread": bigread}[phase](count)


main()
