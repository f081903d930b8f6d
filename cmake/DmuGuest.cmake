# dmu_guest_program(<target>): the VM and Xen harnesses copy this program (and
# the shared libraries it needs) into every guest's initramfs, on PATH.
function(dmu_guest_program target)
  set_property(GLOBAL APPEND PROPERTY DMU_GUEST_PROGRAMS "$<TARGET_FILE:${target}>")
endfunction()
