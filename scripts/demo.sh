#!/usr/bin/env bash
# Builds asme, builds a tiny local image (nothing pulled), and runs the same command with
# plain `docker run` and with `asme run`, then shows who owns what each wrote.
# Run it as yourself (in the docker group), not as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v cargo >/dev/null; then cargo build --release --quiet; fi
asme=target/x86_64-unknown-linux-gnu/release/asme

image=asme-demo/busybox
if ! docker image inspect "$image" >/dev/null 2>&1; then
  busybox=$(command -v busybox) || { echo "install busybox-static first" >&2; exit 1; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/bin" "$root/etc" "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in sh id touch mkdir ls; do ln -s busybox "$root/bin/$applet"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$image" >/dev/null
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/asme-demo.XXXXXX")
mkdir "$out/plain" "$out/asme"
script='mkdir -p build && touch build/output && echo "  inside: $(id -un 2>/dev/null || echo "I have no name!") uid=$(id -u) HOME=$HOME"'
echo "+ docker run --rm -v $out/plain:/src -w /src $image sh -c '...'"
docker run --rm -v "$out/plain:/src" -w /src "$image" sh -c "$script"
echo "+ asme run --rm -v $out/asme:/src -w /src $image sh -c '...'"
"$asme" run --rm -v "$out/asme:/src" -w /src "$image" sh -c "$script"
echo
echo "On the host you are $(id -un) (uid $(id -u)); the files are owned by:"
ls -lnd "$out"/*/build "$out"/*/build/output | awk '{print "  " $3 ":" $4 "  " $9}'
echo "(what plain docker wrote is root's: you cannot remove $out/plain/build without sudo)"
echo
echo "+ asme fix $out/plain"
"$asme" fix "$out/plain"
ls -lnd "$out/plain/build" "$out/plain/build/output" | awk '{print "  " $3 ":" $4 "  " $9}'
rm -rf "$out"
