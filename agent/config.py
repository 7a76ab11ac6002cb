"""Context variables -> a typed, immutable Config, with every problem collected.

Rules (documented in the README):
- an empty string means unset (OneFlow passes unsupplied user inputs as empty strings);
- every ``FL_X`` may also be given as ``ONEAPP_FL_X`` and ``FLOWER_VERSION`` as
  ``ONEAPP_FLOWER_VERSION``; the agent's own name wins when both are set and non-empty;
- YES/NO/AUTO values are case-insensitive; anything else is an error naming the variable,
  the value (masked when secret) and the accepted forms.

Every value is untrusted text: each check runs in time linear in its (bounded) length, digits
are ASCII digits ([0-9], never \\d or str.isdigit, which accept other scripts' digits), and
values are parsed by their real grammars (Docker's image reference, Flower's node config).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from agent import flower
from agent.context import Secret
from agent.errors import Problem

DEFAULT_DATA_DIR = "/opt/flower/data"
ISOLATIONS = ("subprocess", "process")
ROLES = ("supernode", "superlink")
"""FL_ROLE: the same image runs a SuperNode (the default) or the federation's SuperLink."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GPU_UUID = re.compile(rf"^GPU-{_UUID}$")
_MIG_UUID = re.compile(rf"^MIG-{_UUID}$")
_MIG_LEGACY = re.compile(rf"^MIG-GPU-{_UUID}/[0-9]{{1,3}}/[0-9]{{1,3}}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]\s]+):([0-9]{1,5})")
MAX_HOST_PORT = 253 + 1 + 5

# Docker's image reference grammar (github.com/distribution/reference, regexp.go), ASCII only.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}"  # what a pull accepts
_REFERENCE = re.compile(
    rf"(?:({_DOMAIN})/)?({_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::({_TAG}))?(?:@({_DIGEST}))?"
)
MAX_IMAGE_NAME = 255  # NameTotalLengthMax
MAX_IMAGE_REFERENCE = MAX_IMAGE_NAME + 1 + 128 + 1 + 7 + 128

# Flower's node config: space-separated key=value (flwr/common/config.py parse_config_args),
# read one anchored pair at a time so the scan is linear.
_NODE_CONFIG_AT = re.compile(r"\s*([^\s=]+)=('[^']*'|\"[^\"]*\"|\S+)(?=\s|$)")
_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
MAX_NODE_CONFIG = 4096
MAX_DATA_DIR = 1024
MAX_PATH_COMPONENT = 255
MAX_CA_BASE64 = 96 * 1024


@dataclass(frozen=True)
class DeviceSelector:
    """One entry of FL_CUDA_VISIBLE_DEVICES: an index, a GPU UUID or a MIG UUID."""

    kind: str  # "index" | "gpu_uuid" | "mig_uuid"
    value: str

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ImageReference:
    """A Docker image reference split as the engine reads it.

    `registry` is None for Docker Hub names (docker's rule: the first component is a registry
    only when it has a '.' or ':', is `localhost`, or has upper case letters).
    """

    registry: str | None
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """What `docker pull` takes as the repository."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def pull_tag(self) -> str:
        """The `tag` argument of an Engine pull: the digest when there is one (the engine then
        pulls by digest), else the tag, else `latest`."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name + (f":{self.tag}" if self.tag else "")
        return text + (f"@{self.digest}" if self.digest else "")


def parse_image_reference(text: str) -> ImageReference | None:
    """`text` as Docker parses an image reference; None when docker would refuse it."""
    if len(text) > MAX_IMAGE_REFERENCE or not text.isascii():
        return None
    match = _REFERENCE.fullmatch(text)
    if match is None:
        return None
    domain, path, tag, digest = match.groups()
    if domain is not None and not _is_registry(domain):
        domain, path = None, f"{domain}/{path}"
    name = f"{domain}/{path}" if domain else path
    if len(name) > MAX_IMAGE_NAME or re.fullmatch(r"[a-f0-9]{64}", name):
        return None  # too long, or an image id that docker refuses as a name
    return ImageReference(domain, path, tag, digest)


def _is_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component.lower() != component
    )


@dataclass(frozen=True)
class Config:
    """The validated configuration. Defaults are the table in the README."""

    role: str = "supernode"  # ROLES
    gpu_enabled: str = "AUTO"  # YES | NO | AUTO
    gpu_required: bool = False
    cuda_visible_devices: tuple[DeviceSelector, ...] | None = None  # None: all
    gpu_memory_fraction: float | None = None
    superlink_address: str | None = None  # host:port; None: discovered through OneGate
    node_config: str | None = None  # None: partition id from OneGate
    flower_version: str = flower.DEFAULT_FLOWER_VERSION
    supernode_image: str = flower.default_image(flower.DEFAULT_FLOWER_VERSION)
    flower_version_set: bool = False  # FLOWER_VERSION given: never paired with the SuperLink's
    supernode_image_set: bool = False  # FL_SUPERNODE_IMAGE given: the operator chose the image
    isolation: str = "subprocess"
    log_level: str = "INFO"
    max_retries: int = 0
    max_wait_time: int = 0
    tls_enabled: bool = True
    ssl_ca_cert: str | None = None  # PEM text, decoded from base64
    ssl_cert: str | None = None  # superlink role: the operator's server certificate (PEM)
    ssl_key: Secret | None = None  # superlink role: its private key (PEM); never shown
    node_auth: bool = True  # SuperNode authentication (needs TLS): keys, registration
    node_facts: bool = True  # FL_NODE_FACTS: the GPU facts in the SuperNode's --node-config
    toolkit_install: str = "AUTO"  # AUTO | NEVER
    data_dir: str = DEFAULT_DATA_DIR

    @property
    def wants_gpu(self) -> bool:
        return self.gpu_enabled != "NO"

    @property
    def uses_node_key(self) -> bool:
        """SuperNode authentication applies: TLS on (Flower refuses it without) and
        FL_NODE_AUTH=YES."""
        return self.role == "supernode" and self.tls_enabled and self.node_auth

    @property
    def image_reference(self) -> ImageReference:
        """The SuperNode image parsed: what a pull needs (a digest is pulled as a digest)."""
        parsed = parse_image_reference(self.supernode_image)
        if parsed is None:  # build_config refuses such values; a hand-built Config may not
            raise ValueError(f"not an image reference: {self.supernode_image!r}")
        return parsed

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view with the secret masked."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cuda_visible_devices" and value is not None:
                value = [str(v) for v in value]
            elif f.name in ("ssl_ca_cert", "ssl_cert") and value:
                value = f"<PEM, {len(value)} bytes>"
            elif f.name == "ssl_key" and value is not None:
                value = "***"
            out[f.name] = value
        return out


@dataclass(frozen=True)
class ConfigResult:
    config: Config | None
    problems: tuple[Problem, ...]
    sources: dict[str, str]  # setting -> the variable name it came from

    @property
    def ok(self) -> bool:
        return not self.problems


class _Reader:
    """Reads variables with aliases and collects problems instead of stopping at the first."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.variables = variables
        self.problems: list[Problem] = []
        self.sources: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        """The value of `name` or its ONEAPP_ alias; empty means unset."""
        for candidate in (name, f"ONEAPP_{name}"):
            value = self.variables.get(candidate, "")
            if value != "":
                self.sources[name] = candidate
                return value
        return None

    def bad(self, name: str, value: str, accepted: str, *, secret: bool = False) -> None:
        shown = "***" if secret else repr(value if len(value) <= 80 else value[:77] + "...")
        self.problems.append(
            Problem(
                "invalid_value",
                self.sources.get(name, name),
                f"invalid value {shown}",
                f"accepted: {accepted}",
            )
        )

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        """One of `options`, matched case-insensitively and returned as `options` spell it."""
        raw = self.get(name)
        if raw is None:
            return default
        spelled = {option.upper(): option for option in options}
        if raw.strip().upper() in spelled:
            return spelled[raw.strip().upper()]
        self.bad(name, raw, ", ".join(options) + " (case-insensitive)")
        return default

    def yes_no(self, name: str, default: bool) -> bool:
        return self.choice(name, ("YES", "NO"), "YES" if default else "NO") == "YES"

    def integer(self, name: str) -> int:
        raw = self.get(name)
        if raw is None:
            return 0
        if re.fullmatch(r"[0-9]{1,9}", raw.strip()):
            return int(raw.strip())
        self.bad(name, raw, "an integer >= 0 (0 means unlimited)")
        return 0


def build_config(
    variables: Mapping[str, str],
    *,
    baked_flower_version: str = flower.DEFAULT_FLOWER_VERSION,
) -> ConfigResult:
    """Validate every variable; return the Config (None when any problem) and all problems."""
    r = _Reader(variables)
    version = _flower_version(r, baked_flower_version)
    values = {
        "role": r.choice("FL_ROLE", ROLES, "supernode"),
        "gpu_enabled": r.choice("FL_GPU_ENABLED", ("YES", "NO", "AUTO"), "AUTO"),
        "gpu_required": r.yes_no("FL_GPU_REQUIRED", False),
        "cuda_visible_devices": _devices(r),
        "gpu_memory_fraction": _fraction(r),
        "superlink_address": _address(r),
        "node_config": _node_config(r),
        "flower_version": version,
        "supernode_image": _image(r, version),
        "flower_version_set": "FLOWER_VERSION" in r.sources,
        "supernode_image_set": "FL_SUPERNODE_IMAGE" in r.sources,
        "isolation": r.choice("FL_ISOLATION", ISOLATIONS, "subprocess"),
        "log_level": r.choice("FL_LOG_LEVEL", LOG_LEVELS, "INFO"),
        "max_retries": r.integer("FL_MAX_RETRIES"),
        "max_wait_time": r.integer("FL_MAX_WAIT_TIME"),
        "tls_enabled": r.yes_no("FL_TLS_ENABLED", True),
        "ssl_ca_cert": _ca_cert(r),
        "ssl_cert": _server_cert(r),
        "ssl_key": _server_key(r),
        "node_auth": r.yes_no("FL_NODE_AUTH", True),
        "node_facts": r.yes_no("FL_NODE_FACTS", True),
        "toolkit_install": r.choice("FL_TOOLKIT_INSTALL", ("AUTO", "NEVER"), "AUTO"),
        "data_dir": _data_dir(r),
    }
    if values["gpu_enabled"] == "NO" and values["gpu_required"]:
        r.problems.append(
            Problem(
                "conflicting_values",
                "FL_GPU_REQUIRED",
                "FL_GPU_REQUIRED=YES contradicts FL_GPU_ENABLED=NO",
                "set FL_GPU_ENABLED to YES or AUTO, or FL_GPU_REQUIRED to NO",
            )
        )
    _operator_tls_together(r, values)
    problems = tuple(r.problems)
    config = None if problems else Config(**values)
    return ConfigResult(config, problems, dict(r.sources))


def _flower_version(r: _Reader, baked: str) -> str:
    raw = r.get("FLOWER_VERSION")
    if raw is None:
        return baked
    version = raw.strip()
    if flower.release_for(version) is None:
        r.bad("FLOWER_VERSION", raw, f"X.Y.Z from {flower.supported_range()}")
        return baked
    return version


def _image(r: _Reader, version: str) -> str:
    raw = r.get("FL_SUPERNODE_IMAGE")
    if raw is None:
        return flower.default_image(version)
    parsed = parse_image_reference(raw.strip())
    if parsed is not None:
        return str(parsed)
    r.bad(
        "FL_SUPERNODE_IMAGE",
        raw,
        "a Docker image reference such as registry:5000/repo/name:tag or repo/name@sha256:<hex>",
    )
    return flower.default_image(version)


def _devices(r: _Reader) -> tuple[DeviceSelector, ...] | None:
    raw = r.get("FL_CUDA_VISIBLE_DEVICES")
    if raw is None or raw.strip().lower() == "all":
        return None
    accepted = (
        "all, or a comma list of GPU indices, GPU-<uuid>, MIG-<uuid>, MIG-GPU-<uuid>/<gi>/<ci>"
    )
    selectors: list[DeviceSelector] = []
    for entry in (e.strip() for e in raw.split(",")):
        selector = _selector(entry)
        if selector is None:
            r.bad("FL_CUDA_VISIBLE_DEVICES", raw, f"{accepted}; bad entry {entry!r}")
            return None
        if selector in selectors:
            r.bad("FL_CUDA_VISIBLE_DEVICES", raw, f"{accepted}; no duplicates ({entry!r} twice)")
            return None
        selectors.append(selector)
    return tuple(selectors)


def _selector(entry: str) -> DeviceSelector | None:
    if re.fullmatch(r"[0-9]{1,3}", entry):
        return DeviceSelector("index", str(int(entry)))
    if _GPU_UUID.match(entry):
        return DeviceSelector("gpu_uuid", entry)
    if _MIG_UUID.match(entry) or _MIG_LEGACY.match(entry):
        return DeviceSelector("mig_uuid", entry)
    return None


def _fraction(r: _Reader) -> float | None:
    raw = r.get("FL_GPU_MEMORY_FRACTION")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if 0 < value <= 1:
        return value
    r.bad("FL_GPU_MEMORY_FRACTION", raw, "a number f with 0 < f <= 1, such as 0.5")
    return None


def parse_host_port(text: str) -> tuple[str, int] | None:
    """host:port with an IPv4 address, a [bracketed] IPv6 address or a DNS name."""
    match = _HOST_PORT.fullmatch(text) if len(text) <= MAX_HOST_PORT + 2 else None
    if not match or not text.isascii():
        return None
    host, port = (match[1], match[2]) if match[1] else (match[3], match[4])
    if not 0 < int(port) < 65536:
        return None
    if match[1]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, int(port)
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None
        return host, int(port)
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        return None
    return host, int(port)


def _address(r: _Reader) -> str | None:
    raw = r.get("FL_SUPERLINK_ADDRESS")
    if raw is None:
        return None
    if parse_host_port(raw.strip()):
        return raw.strip()
    r.bad(
        "FL_SUPERLINK_ADDRESS",
        raw,
        "host:port with an IPv4 address, [IPv6] or a DNS name, such as 10.0.0.5:9092",
    )
    return None


def validate_node_config(text: str) -> str | None:
    """Why `text` is not a Flower node config (None when it is one).

    Besides the pairs, Flower reads a value ending in `.toml` as a file to open, and one
    starting with `--` would read as a flag: both are refused.
    """
    if len(text) > MAX_NODE_CONFIG:
        return f"{len(text)} characters, more than {MAX_NODE_CONFIG}"
    if text.startswith("-"):
        return "it starts with '-' (Flower would read it as a command-line flag)"
    if text.endswith(".toml"):
        return "it ends in '.toml' (Flower would open it as a file)"
    pairs, pos = _scan_pairs(text)
    leftover = text[pos:].strip()
    if leftover or not pairs:
        shown = (leftover or text)[:40]
        return f"not key=value pairs separated by spaces (left over: {shown!r})"
    odd = next((k for k, _ in pairs if not _TOML_KEY.fullmatch(k)), None)
    if odd is not None:
        return f"{odd[:40]!r} is not a TOML key (letters, digits, '_', '-', dotted)"
    import tomllib  # ~8 ms: only when a node config is given

    try:
        tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs))
    except tomllib.TOMLDecodeError as exc:
        return f"a value is not TOML ({exc}); quote strings, write true/false in lower case"
    return None


def node_config_pairs(text: str) -> list[tuple[str, str]]:
    """The leading key=value pairs of a node config, as Flower's reader splits them."""
    return _scan_pairs(text)[0]


def _scan_pairs(text: str) -> tuple[list[tuple[str, str]], int]:
    pairs, pos = [], 0
    while (match := _NODE_CONFIG_AT.match(text, pos)) is not None:
        pairs.append((match[1], match[2]))
        pos = match.end()
    return pairs, pos


def _node_config(r: _Reader) -> str | None:
    raw = r.get("FL_NODE_CONFIG")
    if raw is None:
        return None
    why = validate_node_config(raw.strip())
    if why is None:
        return raw.strip()
    r.bad(
        "FL_NODE_CONFIG",
        raw,
        f"space-separated key=value, values in TOML such as partition-id=0 "
        f'data-path="/app/data" use-gpu=true; {why}',
    )
    return None


def _ca_cert(r: _Reader) -> str | None:
    accepted = "base64 of a PEM CA certificate (-----BEGIN CERTIFICATE-----)"
    return _pem(r, "FL_SSL_CA_CERT", accepted)


def _server_cert(r: _Reader) -> str | None:
    return _pem(r, "FL_SSL_CERT", "base64 of the SuperLink's PEM server certificate")


def _server_key(r: _Reader) -> Secret | None:
    """FL_SSL_KEY: a secret, so no problem ever shows its value (masked as ***)."""
    accepted = "base64 of an unencrypted PEM private key"
    pem = _pem(r, "FL_SSL_KEY", accepted, KEY_LABELS, secret=True)
    return Secret(pem) if pem is not None else None


def _pem(
    r: _Reader,
    name: str,
    accepted: str,
    labels: tuple[str, ...] = ("CERTIFICATE",),
    *,
    secret: bool = False,
) -> str | None:
    """The PEM text of the base64 variable `name`; None when unset or not such a PEM."""
    raw = r.get(name)
    if raw is None:
        return None
    pem = decode_pem_base64(raw, labels) if len(raw) <= MAX_CA_BASE64 else None
    if pem is None:
        r.bad(name, raw, accepted, secret=secret)
    return pem


def _operator_tls_together(r: _Reader, values: dict) -> None:
    """The SuperLink's own material comes as a set: FL_SSL_CERT and FL_SSL_KEY together, and
    with FL_SSL_CA_CERT (published as FL_CA_CERT for the SuperNodes to trust)."""
    given = [n for n, k in (("FL_SSL_CERT", "ssl_cert"), ("FL_SSL_KEY", "ssl_key")) if values[k]]
    if values["role"] == "superlink" and values["ssl_ca_cert"] and not given:
        given = ["FL_SSL_CA_CERT"]
    complete = len(given) == 2 and values["ssl_ca_cert"]
    if not given or complete or any("FL_SSL_" in p.subject for p in r.problems):
        return
    r.problems.append(
        Problem(
            "conflicting_values",
            "FL_SSL_CERT/FL_SSL_KEY",
            f"{' and '.join(given)} without the rest of the SuperLink's TLS material",
            "set FL_SSL_CA_CERT, FL_SSL_CERT and FL_SSL_KEY together (FL_ROLE=superlink), or "
            "leave FL_SSL_CERT and FL_SSL_KEY empty to let the agent make its own CA",
        )
    )


KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")


def decode_pem_base64(raw: str, labels: tuple[str, ...] = ("CERTIFICATE",)) -> str | None:
    """base64 of a PEM block (a certificate, or one of `labels`) -> the PEM text, or None when
    it is not one."""
    try:
        text = base64.b64decode("".join(raw.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    if len(text) > MAX_CA_BASE64:
        return None
    if any(f"-----BEGIN {x}-----" in text and f"-----END {x}-----" in text for x in labels):
        return text
    return None


def _data_dir(r: _Reader) -> str:
    raw = r.get("FL_DATA_DIR")
    if raw is None:
        return DEFAULT_DATA_DIR
    value = raw.strip()
    why = data_dir_problem(value)
    if why is None:
        return value.rstrip("/")
    r.bad(
        "FL_DATA_DIR",
        raw,
        f"a directory the agent may own, such as {DEFAULT_DATA_DIR}; {why}",
    )
    return DEFAULT_DATA_DIR


# Trees FL_DATA_DIR may not be in (nor be): the system's, the kernel's, Docker's, the agent's.
DATA_DIR_REFUSED_TREES = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/root",
    "/proc", "/sys", "/dev", "/run", "/var/run", "/var/lib/docker", "/var/lib/containerd",
    "/var/lib/fl-agent", "/var/lib/one-context", "/var/log", "/snap", "/lost+found",
)  # fmt: skip
# Directories FL_DATA_DIR may be below but not be: shared roots the agent does not own.
DATA_DIR_REFUSED_ROOTS = (
    "/", "/home", "/opt", "/srv", "/tmp", "/var", "/var/lib", "/var/tmp", "/mnt", "/media",
    "/usr/local",
)  # fmt: skip


def data_dir_problem(path: str) -> str | None:
    """Why `path` may not be the data directory (None when it may).

    Pure: it judges the text. Whoever creates or mounts the directory checks the same rules
    again on the path with symlinks resolved, and that it is a directory (not a socket).
    """
    if len(path.encode("utf-8", "surrogatepass")) > MAX_DATA_DIR:
        return f"the path is longer than {MAX_DATA_DIR} bytes"
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in path):
        return "the path holds control characters"
    if not path.startswith("/"):
        return "the path is not absolute"
    if ":" in path or "," in path:
        return "the path holds ':' or ',' (Docker's mount syntax)"
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return "the path has '.' or '..' components"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_PATH_COMPONENT for p in parts):
        return f"a path component is longer than {MAX_PATH_COMPONENT} bytes"
    if any(p.startswith(".") for p in parts):
        return "the path goes through a hidden directory (such as ~/.ssh)"
    normal = "/" + "/".join(parts)
    if normal in DATA_DIR_REFUSED_ROOTS:
        return f"{normal} is a shared system directory"
    if len(parts) == 2 and parts[0] == "home":
        return f"{normal} is a user's home directory"
    tree = next(
        (t for t in DATA_DIR_REFUSED_TREES if normal == t or normal.startswith(t + "/")), None
    )
    if tree is not None:
        return f"the path is in {tree}, which the system, Docker or the agent own"
    return None
