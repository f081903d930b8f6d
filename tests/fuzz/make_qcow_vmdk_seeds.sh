#!/bin/bash
# Regenerates the seed corpora of the qcow and vmdk fuzz targets from small
# images made by qemu-img/qemu-io (and a few hand-built ones qemu-img cannot
# make: tiny grains, a VMware-style stream with a footer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
c=$here/corpus
mkdir -p "$c/qcow_image_fuzz" "$c/vmdk_sparse_fuzz" "$c/vmdk_stream_fuzz" "$c/vmdk_descriptor_fuzz"
q() { qemu-img "$@" >/dev/null; }
io() { local f=$1; shift; local a=(); for x in "$@"; do a+=(-c "$x"); done; qemu-io "${a[@]}" "$f" >/dev/null; }

# qcow: empty, data in two L2 tables, 512-byte clusters over a backing file,
# a compressed cluster.
q create -f qcow "$tmp/empty.qcow" 1M
q create -f qcow "$tmp/data.qcow" 3M
io "$tmp/data.qcow" "write -P 1 0 4k" "write -P 2 2M 1k"
q create -f raw "$tmp/base.raw" 1M
q create -f qcow -b base.raw -F raw "$tmp/overlay.qcow"
io "$tmp/overlay.qcow" "write -P 3 1000 1000"
q create -f qcow "$tmp/compressed.qcow" 1M
io "$tmp/compressed.qcow" "write -c -P 4 64k 4k"
cp "$tmp"/*.qcow "$c/qcow_image_fuzz/"

# vmdk sparse: QEMU's layout with data and zeroed grains, and a tiny one.
q create -f vmdk -o zeroed_grain=on "$tmp/qemu.vmdk" 1M
io "$tmp/qemu.vmdk" "write -P 5 0 64k" "write -z 512k 64k"
cp "$tmp/qemu.vmdk" "$c/vmdk_sparse_fuzz/qemu-zeroed.vmdk"
python3 - "$c" <<'PY'
import struct, sys, zlib
c = sys.argv[1]
def header(capacity, grain, gtes, rgd, gd, overhead, flags, version=1, compress=0, desc=(1, 2)):
    h = bytearray(512)
    struct.pack_into('<IIIQQQQIQQQ', h, 0, 0x564d444b, version, flags, capacity, grain,
                     desc[0], desc[1], gtes, rgd, gd, overhead)
    h[73:77] = b'\n \r\n'
    struct.pack_into('<H', h, 77, compress)
    return h
def desc(text):
    d = bytearray(1024)
    d[:len(text)] = text.encode()
    return d
# Tiny sparse: 64 sectors, 8-sector grains, 8 entries a table, zeroed grains.
f = header(64, 8, 8, 3, 5, 8, 3 | 4, version=2) + desc('CID=1\nparentCID=ffffffff\ncreateType="monolithicSparse"\n')
f += bytearray(6 * 512)
for gt_sector, table in ((4, [8, 1, 0, 16]), (6, [8, 1, 0, 16])):
    struct.pack_into('<4I', f, gt_sector * 512, *table)
struct.pack_into('<I', f, 3 * 512, 4)
struct.pack_into('<I', f, 5 * 512, 6)
f += bytes([7]) * 512 * 8 + bytes([8]) * 512 * 8
open(c + '/vmdk_sparse_fuzz/tiny.vmdk', 'wb').write(f)
# VMware-style stream: header says "directory at the end", grain markers,
# grain table and directory markers, footer, end of stream.
grain = 8
f = header(32, grain, 4, 0, 0xffffffffffffffff, 3, 1 | (1 << 16) | (1 << 17), version=3, compress=1)
f += desc('CID=fffffffe\nparentCID=ffffffff\ncreateType="streamOptimized"\n')
gt = [0] * 4
for g, byte in ((0, 9), (2, 10)):
    gt[g] = len(f) // 512
    z = zlib.compress(bytes([byte]) * grain * 512)
    m = struct.pack('<QI', g * grain, len(z)) + z
    f += m + bytes(-len(m) % 512)
def marker(val, kind):
    return struct.pack('<QII', val, 0, kind) + bytes(496)
f += marker(1, 1)
gt_sector = len(f) // 512
f += struct.pack('<4I', *gt) + bytes(512 - 16)
f += marker(1, 2)
gd_sector = len(f) // 512
f += struct.pack('<I', gt_sector) + bytes(508)
f += marker(1, 3) + header(32, grain, 4, 0, gd_sector, 3, 1 | (1 << 16) | (1 << 17), version=3, compress=1)
f += marker(0, 0)
open(c + '/vmdk_stream_fuzz/vmware-footer.vmdk', 'wb').write(f)
PY
head -c 131072 /dev/zero | tr '\0' 'a' > "$tmp/src.raw"
q convert -f raw -O vmdk -o subformat=streamOptimized "$tmp/src.raw" "$c/vmdk_stream_fuzz/qemu-stream.vmdk"

# vmdk descriptors, naming the extents the fuzz target provides (s.vmdk, f.raw).
d=$c/vmdk_descriptor_fuzz
printf '# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 64 FLAT "f.raw" 0\n\n#DDB\nddb.adapterType = "ide"\n' > "$d/flat"
printf '# Disk DescriptorFile\r\nversion=1\r\nCID=1\r\nparentCID=ffffffff\r\ncreateType="twoGbMaxExtentSparse"\r\nparentFileNameHint="base.vmdk"\r\n# Extent description\r\nRW 64 SPARSE "s.vmdk"\r\nRW 8 FLAT "f.raw" 56\r\n' > "$d/split-crlf"
q create -f vmdk -o subformat=twoGbMaxExtentFlat "$tmp/qemu.vmdk" 1M
cp "$tmp/qemu.vmdk" "$d/qemu-twogb-flat"
