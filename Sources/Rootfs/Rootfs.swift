// Rootfs: being written
