#!/bin/sh
# Smoke test of the Xen harness and hotplug/block-dmu, run by hand
# (tests/xen/README.md): the steps of lib/guest/raw-disk-steps.sh alone.
# The suite runs them at the start of xen.dmu-lifecycle, saving a Xen boot.
# xen: suite=no timeout=900
. /usr/lib/dmu-test/lib.sh
. /usr/lib/dmu-test/xen.sh

. /src/tests/xen/lib/guest/raw-disk-steps.sh
step "ok"
