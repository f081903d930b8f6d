#!/usr/bin/env python3
"""virtio-state.py QMP_SOCKET: QEMU's view of every virtqueue of a running
guest, one line per queue, for a guest that reported a hang.

Printed per queue: what QEMU has taken from the ring and completed
(last_avail, used, inuse, signalled) and, read from guest memory, the ring
indexes the guest wrote (avail.idx, used_event) and QEMU wrote (used.idx,
avail_event), and the device's ISR.  A disk whose requests the guest still
counts in flight while QEMU shows inuse=0 and used.idx past used_event
means a completion QEMU signalled, or believed it need not signal, that the
guest never processed: the stall is below the block layer.
"""
import json
import re
import socket
import sys


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw")
        self.file.readline()  # greeting
        self.call("qmp_capabilities")

    def call(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def hmp(self, line):
        reply = self.call("human-monitor-command", **{"command-line": line})
        return reply.get("return", str(reply.get("error")))


def field(text, name):
    m = re.search(r"^\s*%s:\s*(\S+)" % re.escape(name), text, re.M)
    return m.group(1) if m else "?"


def u16(qmp, addr):
    m = re.search(r":\s*0x([0-9a-f]+)", qmp.hmp("xp /1hx 0x%x" % addr))
    return int(m.group(1), 16) if m else None


def main():
    qmp = Qmp(sys.argv[1])
    for line in qmp.hmp("info virtio").splitlines():
        m = re.match(r"(\S+) \[(\S+)\]", line.strip())
        if not m:
            continue
        path, kind = m.groups()
        status = qmp.hmp("info virtio-status %s" % path)
        isr = field(status, "isr")
        nvqs = field(status, "num_vqs")
        for q in range(int(nvqs) if nvqs.isdigit() else 1):
            qs = qmp.hmp("info virtio-queue-status %s %d" % (path, q))
            out = "%s %s q%d: inuse=%s last_avail=%s used=%s signalled=%s isr=%s" % (
                path, kind, q, field(qs, "inuse"), field(qs, "last_avail_idx"),
                field(qs, "used_idx"), field(qs, "signalled_used"), isr)
            try:
                num = int(field(qs, "num"))
                avail = int(field(qs, "avail"), 16)
                used = int(field(qs, "used"), 16)
                out += " | guest ring: avail.idx=%s used.idx=%s used_event=%s avail_event=%s" % (
                    u16(qmp, avail + 2), u16(qmp, used + 2),
                    u16(qmp, avail + 4 + 2 * num), u16(qmp, used + 4 + 8 * num))
            except ValueError:
                pass
            print(out)


if __name__ == "__main__":
    main()
