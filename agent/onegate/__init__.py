"""OneGate: the wire format (wire), HTTP (transport), the queue on disk (outbox), READY as
the context asks it (ready) and the client the agent uses (reporter).

What the server does and how it differs by release (OpenNebula/one src/onegate/onegate-server.rb
at release-6.10.0, 7.0.0, 7.0.1): docs/onegate.md.
"""

from agent.onegate.ready import ReadyPolicy
from agent.onegate.reporter import Reporter, queue_dir, remote_status
from agent.onegate.transport import OneGateError, RetryPolicy, new_run
from agent.onegate.wire import (
    ATTRIBUTES,
    BASE64_SUFFIX,
    LIST_SEPARATOR,
    READY_ATTRIBUTES,
    READY_STATES,
    STATES,
    Report,
    decode_attributes,
    error_value,
    is_plain,
    state_report,
    wire,
)

__all__ = [
    "ATTRIBUTES",
    "BASE64_SUFFIX",
    "LIST_SEPARATOR",
    "READY_ATTRIBUTES",
    "READY_STATES",
    "STATES",
    "OneGateError",
    "ReadyPolicy",
    "Report",
    "Reporter",
    "RetryPolicy",
    "decode_attributes",
    "error_value",
    "is_plain",
    "new_run",
    "queue_dir",
    "remote_status",
    "state_report",
    "wire",
]
