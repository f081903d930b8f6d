#!/usr/bin/env python3
"""Builds the hostile-image corpus: malformed qcow, qcow2 and vmdk images.

Usage: make_corpus.py OUTDIR

Each entry is a directory OUTDIR/<name>/ holding the image (and whatever it
refers to), made by qemu-img/qemu-io and then broken on purpose by patching
bytes.  OUTDIR/manifest.json lists the entries:
  name   entry directory
  image  the file to hand to dmu
  format the -f to pass, when probing would not find the format
  expect what dmu must do (beyond never crashing, hanging, printing more than
         one error line or changing the files):
    refuse        the defect shows when the image is opened: every subcommand
                  fails with one line naming the file and the problem
    refuse-chain  the backing chain is broken (loop, missing, too deep):
                  everything that opens the chain fails; info without
                  --backing-chain and check open only the image, as qemu-img
                  does, and may succeed
    refuse-data   a table entry or grain is broken: the image opens, but
                  export and reads of the damaged range fail
    qemu-reads    QEMU opens the image and reads zeros where tables lie past
                  the end of the file; dmu may too, and then must read what
                  qemu-img convert reads, and check must exit as qemu-img
                  check does
  why    what is wrong

The hostile test (tests/unit/hostile_corpus_test.cc) runs every dmu
subcommand on every entry under a timeout and checks the outcome.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

MANIFEST = []


def sh(cmd, cwd):
    subprocess.run(cmd, shell=True, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def patch(path, offset, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def read(path, offset, fmt):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def entry(out, name, image, expect, why, build, fmt=None):
    assert expect in ("refuse", "refuse-chain", "refuse-data", "qemu-reads"), expect
    d = os.path.join(out, name)
    os.makedirs(d)
    build(d, os.path.join(d, image))
    e = {"name": name, "image": image, "expect": expect, "why": why}
    if fmt:
        e["format"] = fmt
    MANIFEST.append(e)


# --- qcow2 -------------------------------------------------------------------

def qcow2(d, path, opts=""):
    name = os.path.basename(path)
    sh(f"qemu-img create -q -f qcow2 {opts} {name} 1M", d)
    sh(f"qemu-io -f qcow2 {name} -c 'write -P 1 0 64k' -c 'write -P 2 512k 64k'", d)


def qcow2_l2_entry(path, index):
    l1 = read(path, 40, ">Q")[0]
    l2 = read(path, l1, ">Q")[0] & 0x00FFFFFFFFFFFE00
    return l2 + 8 * index


def qcow2_entries(out):
    def truncated_header(d, p):
        qcow2(d, p)
        truncate(p, 50)
    entry(out, "qcow2-truncated-header", "x.qcow2", "refuse",
          "file ends inside the header", truncated_header)

    def truncated_tables(d, p):
        qcow2(d, p)
        truncate(p, 0x28000)
    entry(out, "qcow2-truncated-tables", "x.qcow2", "qemu-reads",
          "file ends before the L1 table", truncated_tables)

    def l1_past_eof(d, p):
        qcow2(d, p)
        patch(p, 40, ">Q", 0x7FFF0000)
    entry(out, "qcow2-l1-past-eof", "x.qcow2", "qemu-reads",
          "L1 table offset past the end of the file", l1_past_eof)

    def l1_overflow(d, p):
        qcow2(d, p)
        patch(p, 40, ">Q", 0xFFFFFFFFFFFF0000)
    entry(out, "qcow2-l1-offset-overflow", "x.qcow2", "refuse",
          "L1 table offset + size overflows 64 bits", l1_overflow)

    def l1_huge(d, p):
        qcow2(d, p)
        patch(p, 36, ">I", 0x7FFFFFFF)
    entry(out, "qcow2-l1-size-huge", "x.qcow2", "refuse",
          "L1 table of 2^31 entries", l1_huge)

    def size_huge(d, p):
        qcow2(d, p)
        patch(p, 24, ">Q", 0x7FFFFFFFFFFFFE00)
    entry(out, "qcow2-size-huge", "x.qcow2", "refuse",
          "virtual size of 2^63 bytes with a one-entry L1", size_huge)

    def cluster_bits(d, p):
        qcow2(d, p)
        patch(p, 20, ">I", 40)
    entry(out, "qcow2-cluster-bits-40", "x.qcow2", "refuse",
          "cluster_bits 40", cluster_bits)

    def incompat(d, p):
        qcow2(d, p)
        patch(p, 72, ">Q", 1 << 40)
    entry(out, "qcow2-unknown-incompatible-feature", "x.qcow2", "refuse",
          "unknown incompatible feature bit 40", incompat)

    def encrypted(d, p):
        qcow2(d, p)
        patch(p, 32, ">I", 1)
    entry(out, "qcow2-encrypted-aes", "x.qcow2", "refuse",
          "AES encryption (crypt_method 1)", encrypted)

    def refcount_past_eof(d, p):
        qcow2(d, p)
        patch(p, 48, ">Q", 0x7FFF0000)
    entry(out, "qcow2-refcount-table-past-eof", "x.qcow2", "qemu-reads",
          "refcount table offset past the end of the file", refcount_past_eof)

    def refcount_order(d, p):
        qcow2(d, p)
        patch(p, 96, ">I", 7)
    entry(out, "qcow2-refcount-order-7", "x.qcow2", "refuse",
          "refcount_order 7 (128-bit refcounts)", refcount_order)

    def backing_name_overflow(d, p):
        qcow2(d, p)
        patch(p, 8, ">QI", 0xFFFFFFFFFFFFFF00, 1023)
    entry(out, "qcow2-backing-name-overflow", "x.qcow2", "refuse",
          "backing file name offset + size overflows", backing_name_overflow)

    def backing_self(d, p):
        qcow2(d, p)
        sh("qemu-img rebase -u -b x.qcow2 -F qcow2 x.qcow2", d)
    entry(out, "qcow2-backing-self", "x.qcow2", "refuse-chain",
          "the image is its own backing file", backing_self)

    def backing_loop(d, p):
        sh("qemu-img create -q -f qcow2 b.qcow2 1M", d)
        sh("qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 x.qcow2", d)
        sh("qemu-img rebase -u -b x.qcow2 -F qcow2 b.qcow2", d)
    entry(out, "qcow2-backing-loop", "x.qcow2", "refuse-chain",
          "x -> b -> x", backing_loop)

    def backing_missing(d, p):
        sh("qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 x.qcow2 1M", d)
    entry(out, "qcow2-backing-missing", "x.qcow2", "refuse-chain",
          "the backing file does not exist", backing_missing)

    def backing_deep(d, p):
        sh("qemu-img create -q -f qcow2 i0.qcow2 1M", d)
        for i in range(1, 70):
            sh(f"qemu-img create -q -f qcow2 -u -b i{i - 1}.qcow2 -F qcow2 i{i}.qcow2 1M", d)
        shutil.copy(os.path.join(d, "i69.qcow2"), p)
    entry(out, "qcow2-backing-70-deep", "x.qcow2", "refuse-chain",
          "a backing chain 71 images deep", backing_deep)

    def l2_unaligned(d, p):
        qcow2(d, p)
        at = qcow2_l2_entry(p, 0)
        patch(p, at, ">Q", read(p, at, ">Q")[0] + 0x200)
    entry(out, "qcow2-l2-entry-unaligned", "x.qcow2", "refuse-data",
          "L2 entry pointing at an unaligned host offset", l2_unaligned)

    def l2_table_past_eof(d, p):
        qcow2(d, p)
        l1 = read(p, 40, ">Q")[0]
        patch(p, l1, ">Q", (1 << 63) | 0x7FFF0000)
    entry(out, "qcow2-l2-table-past-eof", "x.qcow2", "qemu-reads",
          "L1 entry pointing at an L2 table past the end of the file", l2_table_past_eof)

    def compressed_bad(d, p):
        sh("truncate -s 1M s.raw && qemu-io -f raw s.raw -c 'write -P 3 0 1M'", d)
        sh("qemu-img convert -c -O qcow2 s.raw x.qcow2 && rm s.raw", d)
        at = qcow2_l2_entry(p, 0)
        entry_ = read(p, at, ">Q")[0]
        # keep the flags (compressed), move the data far past the end of the file
        patch(p, at, ">Q", (entry_ & (3 << 62)) | 0x3FFFFF0000)
    entry(out, "qcow2-compressed-past-eof", "x.qcow2", "refuse-data",
          "compressed cluster descriptor pointing past the end of the file", compressed_bad)


# --- qcow (version 1) ----------------------------------------------------------

def qcow(d, path):
    name = os.path.basename(path)
    sh(f"qemu-img create -q -f qcow {name} 1M", d)
    sh(f"qemu-io -f qcow {name} -c 'write -P 1 0 8k'", d)


def qcow_entries(out):
    def truncated(d, p):
        qcow(d, p)
        truncate(p, 30)
    entry(out, "qcow-truncated-header", "x.qcow", "refuse",
          "file ends inside the header", truncated)

    def l1_past_eof(d, p):
        qcow(d, p)
        patch(p, 40, ">Q", 0x7FFF0000)
    entry(out, "qcow-l1-past-eof", "x.qcow", "refuse",
          "L1 table offset past the end of the file", l1_past_eof)

    def cluster_bits(d, p):
        qcow(d, p)
        patch(p, 32, ">BB", 40, 9)
    entry(out, "qcow-cluster-bits-40", "x.qcow", "refuse",
          "cluster_bits 40", cluster_bits)

    def encrypted(d, p):
        qcow(d, p)
        patch(p, 36, ">I", 1)
    entry(out, "qcow-encrypted-aes", "x.qcow", "refuse",
          "AES encryption (crypt_method 1)", encrypted)

    def size_huge(d, p):
        qcow(d, p)
        patch(p, 24, ">Q", 0x7FFFFFFFFFFFFE00)
    entry(out, "qcow-size-huge", "x.qcow", "refuse",
          "virtual size of 2^63 bytes", size_huge)

    def backing_loop(d, p):
        sh("qemu-img create -q -f qcow -u -b b.qcow -F qcow x.qcow 1M", d)
        sh("qemu-img create -q -f qcow -u -b x.qcow -F qcow b.qcow 1M", d)
    entry(out, "qcow-backing-loop", "x.qcow", "refuse-chain", "x -> b -> x", backing_loop)


# --- vmdk --------------------------------------------------------------------

def vmdk(d, path, subformat="monolithicSparse"):
    name = os.path.basename(path)
    sh(f"qemu-img create -q -f vmdk -o subformat={subformat} {name} 1M", d)
    sh(f"qemu-io -f vmdk {name} -c 'write -P 1 0 64k' -c 'write -P 2 512k 64k'", d)


def replace_text(path, old, new):
    with open(path, "rb") as f:
        data = f.read()
    assert old in data, (path, old)
    with open(path, "wb") as f:
        f.write(data.replace(old, new, 1))


def vmdk_entries(out):
    def truncated(d, p):
        vmdk(d, p)
        truncate(p, 100)
    entry(out, "vmdk-truncated-header", "x.vmdk", "refuse",
          "file ends inside the sparse header", truncated)

    def gd_past_eof(d, p):
        vmdk(d, p)
        patch(p, 56, "<Q", 0x7FFFFFFF)
        patch(p, 48, "<Q", 0x7FFFFFFF)
    entry(out, "vmdk-grain-directory-past-eof", "x.vmdk", "refuse",
          "grain directory past the end of the file", gd_past_eof)

    def grain_zero(d, p):
        vmdk(d, p)
        patch(p, 20, "<Q", 0)
    entry(out, "vmdk-grain-size-zero", "x.vmdk", "refuse", "grainSize 0", grain_zero)

    def grain_huge(d, p):
        vmdk(d, p)
        patch(p, 20, "<Q", 1 << 40)
    entry(out, "vmdk-grain-size-huge", "x.vmdk", "refuse", "grainSize 2^40 sectors", grain_huge)

    def capacity_huge(d, p):
        vmdk(d, p)
        patch(p, 12, "<Q", 1 << 62)
    entry(out, "vmdk-capacity-huge", "x.vmdk", "refuse",
          "capacity 2^62 sectors with a tiny grain directory", capacity_huge)

    def gtes_zero(d, p):
        vmdk(d, p)
        patch(p, 44, "<I", 0)
    entry(out, "vmdk-gtes-per-gt-zero", "x.vmdk", "refuse", "numGTEsPerGT 0", gtes_zero)

    def descriptor_garbage(d, p):
        vmdk(d, p, "monolithicFlat")
        replace_text(p, b'RW 2048 FLAT "x-flat.vmdk" 0', b'RW two FLAT x-flat.vmdk" -1')
    entry(out, "vmdk-descriptor-broken-extent-line", "x.vmdk", "refuse",
          "descriptor extent line that does not parse", descriptor_garbage)

    def descriptor_missing_extent(d, p):
        vmdk(d, p, "monolithicFlat")
        os.remove(os.path.join(d, "x-flat.vmdk"))
    entry(out, "vmdk-descriptor-extent-missing", "x.vmdk", "refuse",
          "descriptor names an extent file that does not exist", descriptor_missing_extent)

    def descriptor_extent_past_eof(d, p):
        vmdk(d, p, "monolithicFlat")
        replace_text(p, b'RW 2048 FLAT "x-flat.vmdk" 0', b'RW 2048 FLAT "x-flat.vmdk" 9999999')
    entry(out, "vmdk-flat-extent-offset-past-eof", "x.vmdk", "refuse",
          "flat extent starting past the end of its file", descriptor_extent_past_eof)

    def descriptor_self(d, p):
        vmdk(d, p, "monolithicFlat")
        replace_text(p, b'RW 2048 FLAT "x-flat.vmdk" 0', b'RW 2048 SPARSE "x.vmdk"')
    entry(out, "vmdk-descriptor-names-itself", "x.vmdk", "refuse",
          "descriptor's extent is the descriptor file itself", descriptor_self)

    def descriptor_huge(d, p):
        with open(p, "wb") as f:
            f.write(b"# Disk DescriptorFile\n" + b"x" * (16 << 20) + b"\n")
    entry(out, "vmdk-descriptor-16m-line", "x.vmdk", "refuse",
          "a 16 MiB descriptor line (probes as raw: named vmdk)", descriptor_huge, "vmdk")

    def parent_loop(d, p):
        vmdk(d, os.path.join(d, "p.vmdk"))
        sh("qemu-img create -q -f vmdk -b p.vmdk -F vmdk x.vmdk", d)
        replace_text(p, b'parentFileNameHint="p.vmdk"', b'parentFileNameHint="x.vmdk"')
    entry(out, "vmdk-parent-self", "x.vmdk", "refuse-chain",
          "the image is its own parent", parent_loop)

    def gt_entry_past_eof(d, p):
        vmdk(d, p)
        gd = read(p, 56, "<Q")[0] * 512
        gt = read(p, gd, "<I")[0] * 512
        patch(p, gt, "<I", 0x7FFFFFF0)
    entry(out, "vmdk-grain-past-eof", "x.vmdk", "refuse-data",
          "grain table entry pointing past the end of the file", gt_entry_past_eof)

    def stream_bad_marker(d, p):
        sh("truncate -s 1M s.raw && qemu-io -f raw s.raw -c 'write -P 3 0 1M'", d)
        sh("qemu-img convert -O vmdk -o subformat=streamOptimized s.raw x.vmdk && rm s.raw", d)
        overhead = read(p, 64, "<Q")[0] * 512
        # the first grain marker: lba (8 bytes) then the compressed size
        patch(p, overhead + 8, "<I", 0x7FFFFFFF)
    entry(out, "vmdk-stream-grain-marker-huge", "x.vmdk", "refuse-data",
          "streamOptimized grain marker claiming 2 GiB of compressed data", stream_bad_marker)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    qcow2_entries(out)
    qcow_entries(out)
    vmdk_entries(out)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)


if __name__ == "__main__":
    main()
