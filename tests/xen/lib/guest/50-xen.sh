# dom0 start-up hook, sourced by /init (dash) after the modules are loaded:
# the Xen control plane a case expects. A failing command fails the boot.
X=/usr/lib/xen-4.17/bin
mkdir -p /proc/xen /run/xen /run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console /run/lock
grep -q '^xen$' /sys/hypervisor/type 2>/dev/null || { echo "dmu-init: not running on Xen"; false; } &&
mount -t xenfs xenfs /proc/xen &&
$X/xenstored --pid-file /run/xenstored.pid &&
timeout 30 sh -c 'until xenstore-exists / 2>/dev/null; do sleep 0.1; done' &&
$X/xen-init-dom0 >/var/log/xen/xen-init-dom0.log 2>&1 &&
$X/xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid &&
echo "dmu-init: Xen $(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor) dom0 ready (uptime $(cut -d' ' -f1 /proc/uptime) s)"
