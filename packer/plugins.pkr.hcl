# Plugins for current Packer (>= 1.7): run `packer init packer/` once before building.
# Packer 1.6.6 (Debian 12's package) predates this block and has both builders built in: CI
# validates and builds a copy of this directory without this file (see docs/appliance.md).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
    docker = {
      source  = "github.com/hashicorp/docker"
      version = ">= 1.0.8"
    }
  }
}
