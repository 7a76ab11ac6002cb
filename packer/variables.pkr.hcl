# Inputs of the appliance build. Both sources run the same scripts (scripts/*.sh); what differs
# between an OpenNebula image and the CI container is only what these variables say.

variable "repo_dir" {
  type        = string
  default     = ""
  description = "The fl-agent checkout to build the wheel from; empty: the parent of this directory."
}

variable "python" {
  type        = string
  default     = "python3"
  description = "Host Python with pip, used to build the agent's wheel (pip wheel --no-deps)."
}

variable "pip_cert" {
  type        = string
  default     = ""
  description = "Host CA bundle pip must trust inside the build (a TLS-intercepting proxy); empty: the image's own CAs."
}

variable "pip_index_url" {
  type        = string
  default     = ""
  description = "pip index for the agent's dependencies; empty: PyPI."
}

variable "flower_version" {
  type        = string
  default     = ""
  description = "Flower version baked into /etc/fl-agent/flower-version; empty: the agent's default."
}

variable "supernode_image_tar" {
  type        = string
  default     = ""
  description = "Host path of `docker save fl-agent/supernode:<version>`, loaded into the image's engine (qemu). Empty: not pre-loaded."
}

variable "one_context_deb_url" {
  type        = string
  default     = "https://github.com/OpenNebula/one-apps/releases/download/v6.10.0-3/one-context_6.10.0-3.deb"
  description = "The one-context package to install (qemu). Match it to the OpenNebula release."
}

variable "nvidia_toolkit" {
  type        = string
  default     = "bake"
  description = "none | keyring (NVIDIA's apt keyring, online install at boot) | bake (keyring plus the toolkit .debs in /opt/fl-agent/nvidia-toolkit for an offline install at boot)."
}

variable "nvidia_driver_packages" {
  type        = string
  default     = ""
  description = "Ubuntu NVIDIA driver packages to bake, e.g. \"nvidia-headless-570-server nvidia-utils-570-server\"; empty: none (CPU image, or driver installed later)."
}

# --- qemu (the OpenNebula image) ---

variable "ubuntu_image_url" {
  type    = string
  default = "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.img"
}

variable "ubuntu_image_checksum" {
  type    = string
  default = "file:https://cloud-images.ubuntu.com/releases/noble/release/SHA256SUMS"
}

variable "uefi_firmware" {
  type        = string
  default     = "/usr/share/ovmf/OVMF.fd"
  description = "Combined OVMF image on the build host (Debian/Ubuntu package ovmf); the VM boots UEFI."
}

variable "disk_size" {
  type    = string
  default = "16G"
}

variable "accelerator" {
  type    = string
  default = "kvm"
}

variable "headless" {
  type    = bool
  default = true
}

variable "output_dir" {
  type    = string
  default = "output"
}

# --- docker (CI) ---

variable "docker_base_image" {
  type        = string
  default     = "fl-agent/debian:bookworm"
  description = "Local image with systemd and python3 (images/build-base.sh); never pulled."
}

variable "docker_repository" {
  type    = string
  default = "fl-agent/appliance"
}

variable "docker_tag" {
  type    = string
  default = "ci"
}
