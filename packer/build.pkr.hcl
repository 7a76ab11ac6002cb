locals {
  repo = var.repo_dir != "" ? var.repo_dir : "${path.root}/.."
  # Where the provisioning scripts find what the host staged (wheel, units, hook, CA bundle).
  stage_guest = "/tmp/fl-agent-build"
  scripts = [
    "${path.root}/scripts/10-base.sh",
    "${path.root}/scripts/20-one-context.sh",
    "${path.root}/scripts/30-docker.sh",
    "${path.root}/scripts/40-agent.sh",
    "${path.root}/scripts/45-firewall.sh",
    "${path.root}/scripts/50-nvidia.sh",
    "${path.root}/scripts/60-supernode-image.sh",
    "${path.root}/scripts/90-cleanup.sh",
  ]
}

build {
  sources = ["source.qemu.ubuntu", "source.docker.appliance"]

  # On the build host: the agent's wheel and the files the image carries, in one directory.
  provisioner "shell-local" {
    environment_vars = [
      "STAGE=${path.root}/.stage/${source.name}",
      "REPO=${local.repo}",
      "PYTHON=${var.python}",
      "PIP_CERT_SRC=${var.pip_cert}",
      "SUPERNODE_TAR=${var.supernode_image_tar}",
    ]
    script = "${path.root}/scripts/stage.sh"
  }

  provisioner "shell" {
    inline = ["rm -rf ${local.stage_guest}", "mkdir -p ${local.stage_guest}"]
  }

  provisioner "file" {
    source      = "${path.root}/.stage/${source.name}/"
    destination = local.stage_guest
    generated   = true
  }

  provisioner "shell" {
    environment_vars = [
      "DEBIAN_FRONTEND=noninteractive",
      "FL_BUILD_SOURCE=${source.type}",
      "FL_STAGE=${local.stage_guest}",
      "FL_FLOWER_VERSION=${var.flower_version}",
      "FL_PIP_INDEX_URL=${var.pip_index_url}",
      "FL_ONE_CONTEXT_DEB_URL=${source.type == "qemu" ? var.one_context_deb_url : ""}",
      "FL_NVIDIA_TOOLKIT=${var.nvidia_toolkit}",
      "FL_NVIDIA_DRIVER_PACKAGES=${var.nvidia_driver_packages}",
    ]
    scripts = local.scripts
  }

  post-processor "docker-tag" {
    only       = ["docker.appliance"]
    repository = var.docker_repository
    tags       = [var.docker_tag]
  }
}
