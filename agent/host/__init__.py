"""KVM host checks for GPU passthrough (`fl-agent host-check`)."""

from agent.host.checks import HostReport, HostStage, check_host

__all__ = ["HostReport", "HostStage", "check_host"]
