"""The VM side: QEMU, firmware, kernels and modules, the guest init, run and virt."""
