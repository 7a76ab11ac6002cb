"""KVM host checks for GPU passthrough (`fl-agent host-check`)."""

from agent.host.checks import HostReport, check_host

__all__ = ["HostReport", "check_host"]
