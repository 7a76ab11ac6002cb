# The OpenNebula image: Ubuntu 24.04 cloud image, booted UEFI under QEMU/KVM. cloud-init is used
# only to let Packer in (NoCloud over Packer's HTTP server, http/user-data); the scripts install
# one-context, which replaces it, and purge it like one-apps does.
source "qemu" "ubuntu" {
  iso_url          = var.ubuntu_image_url
  iso_checksum     = var.ubuntu_image_checksum
  disk_image       = true
  disk_size        = var.disk_size
  format           = "qcow2"
  accelerator      = var.accelerator
  headless         = var.headless
  machine_type     = "q35"
  cpus             = 2
  memory           = 4096
  net_device       = "virtio-net"
  disk_interface   = "virtio"
  http_directory   = "${path.root}/http"
  qemuargs = [
    ["-bios", var.uefi_firmware],
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
  ]
  ssh_username     = "root"
  ssh_password     = "opennebula" # build only (http/user-data); locked by 90-cleanup.sh
  ssh_timeout      = "15m"
  shutdown_command = "poweroff"
  output_directory = "${var.output_dir}/qemu"
  vm_name          = "fl-agent-supernode.qcow2"
}

# CI: the same scripts inside a container of the local systemd base image. The result boots
# /sbin/init (systemd) like the VM does; the boot test runs it with the host's Docker socket.
source "docker" "appliance" {
  image  = var.docker_base_image
  pull   = false
  commit = true
  # Host network: the build only needs the package archives and PyPI, and does not depend on
  # the engine's default bridge.
  run_command = ["-d", "-i", "-t", "--network=host", "--entrypoint=/bin/sh", "--", "{{.Image}}"]
  changes = [
    "ENTRYPOINT [\"/sbin/init\"]",
    "CMD []",
    "ENV container=docker",
  ]
}
