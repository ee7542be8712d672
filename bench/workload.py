# The timed half of bench/io.sh and bench/fuse.sh: one workload in one folder (a container's
# bind mount, natively, or a FUSE mount), each phase timed here with time.perf_counter, so
# container start-up, mounting and process start-up are not part of any figure.
#
#   python3 bench/workload.py [--mount-kind] DIR small N [HOSTDIR UID:GID]
#                                                     create, stat, read, delete N files
#   python3 bench/workload.py [--mount-kind] DIR bigwrite MIB   write DIR/big, fsync
#   python3 bench/workload.py [--mount-kind] DIR bigread MIB    read DIR/big (caches dropped
#                                                              by the caller)
# (bench/io.sh passes it to the container's python as `python3 -c "$(cat bench/workload.py)"`.)
#
# Runs as root. Everything created in DIR must show as 0:0 there (the stat walk checks every
# entry); with HOSTDIR (the folder under the mount), the new top folder, one of its folders
# and one file must belong to UID:GID there (checked untimed, between the create and the
# stat walk). Prints one "NAME MILLISECONDS" line per phase, after "mount idmapped|plain"
# for DIR with --mount-kind.
import os
import stat
import subprocess
import sys
import time

FOLDERS = 20


def mount_kind(root):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == root:
                return "idmapped" if "idmapped" in fields[5].split(",") else "plain"
    sys.exit(f"workload: {root} is not a mount point")


def report(name, t0):
    print(f"{name} {(time.perf_counter() - t0) * 1000:.1f}", flush=True)


def check_host(root, host, owner):
    want = tuple(int(x) for x in owner.split(":"))
    for rel in ("small", "small/d00", "small/d00/f000000"):
        st = os.lstat(f"{host}/{rel}")
        if (st.st_uid, st.st_gid) != want:
            sys.exit(f"workload: {host}/{rel} (created as root in {root}) belongs to "
                     f"{st.st_uid}:{st.st_gid} on the host, not {owner}")


def small(root, n, host=None, owner=None):
    top = f"{root}/small"
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
            sys.exit("workload: short write")
        os.close(fd)
    report("create", t0)
    os.sync()  # untimed: the next phases should not race the write-back of this one
    if host:
        check_host(root, host, owner)

    t0 = time.perf_counter()
    files = []
    owners = set()
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)  # one lstat per entry
                owners.add((st.st_uid, st.st_gid))
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                else:
                    files.append(entry.path)
    report("stat", t0)
    if len(files) != n:
        sys.exit(f"workload: stat walk found {len(files)} files, not {n}")
    if owners != {(0, 0)}:
        seen = " ".join(f"{u}:{g}" for u, g in sorted(owners))
        sys.exit(f"workload: what root created in {root} shows as owned by {seen}, not 0:0")

    t0 = time.perf_counter()
    total = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        while chunk := os.read(fd, 4096):
            total += len(chunk)
        os.close(fd)
    report("read", t0)
    if total != n * len(data):
        sys.exit(f"workload: read {total} bytes, not {n * len(data)}")

    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", top], check=True)
    report("delete", t0)
    if os.path.lexists(top):
        sys.exit(f"workload: {top} is still there after rm -rf")


def bigwrite(root, mib):
    buf = os.urandom(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(f"{root}/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(mib):
        if os.write(fd, buf) != len(buf):
            sys.exit("workload: short write")
    os.fsync(fd)
    os.close(fd)
    report("bigwrite", t0)


def bigread(root, mib):
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    fd = os.open(f"{root}/big", os.O_RDONLY)
    total = 0
    while got := os.readv(fd, [buf]):
        total += got
    os.close(fd)
    report("bigread", t0)
    if total != mib << 20:
        sys.exit(f"workload: read {total} bytes, not {mib << 20}")


def main():
    args = sys.argv[1:]
    say_mount = args[:1] == ["--mount-kind"]
    if say_mount:
        args = args[1:]
    root, phase, count = args[0], args[1], int(args[2])
    if os.geteuid() != 0:
        sys.exit("workload: run it as root")
    if say_mount:
        print(f"mount {mount_kind(root)}", flush=True)
    if phase == "small":
        small(root, count, *args[3:5])
    else:
        {"bigwrite": bigwrite, "bigread": bigread}[phase](root, count)


main()
