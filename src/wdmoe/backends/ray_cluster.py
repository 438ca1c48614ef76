"""Joining or starting the Ray cluster that carries the devices, always with Ray's token authentication on.

Each device node offers one custom resource, `wdmoe_device_K`, and the actor of device K asks for it, so the actor
can only land on that node. Ray reads its authentication settings from the environment of each process (and passes
them to the processes it starts), so this module sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH before Ray starts:
a process or node without the cluster's token cannot join, and cannot call an actor.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from wdmoe.backends.ray_actor import SPLIT_DIR_ENV
from wdmoe.errors import DevicesUnavailable, WdmoeError

NAMESPACE = "wdmoe"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # Ray's own default; created for a new local cluster
# Ray's metrics exporter (a Prometheus endpoint per node, on all interfaces) answers without the token: off in the
# clusters and nodes wdmoe starts, unless the environment already says otherwise (docs/cluster.md, "Ports")
METRICS_ENV = "RAY_enable_metrics_collection"


REACH_TIMEOUT_S = 10.0  # how long a cluster address may take to accept a TCP connection before it is refused
# Attempts of Ray's driver to reach the GCS of a joined cluster (each waits ~36 s on a port that answers TCP but is
# not a GCS; Ray's default, 20 attempts, is about 12 minutes). A running head answers the first one.
GCS_ATTEMPTS_ENV, GCS_ATTEMPTS = "RAY_gcs_server_port_wait_time_s", 3


class ClusterUnreachable(DevicesUnavailable):
    """No Ray head answers at the address given (nothing listens there, or the host is out of reach)."""


DEVICE_SLOTS = 16  # units of its resource a device node offers: the actors of up to 16 models (pools) at once


def device_resource(device: int) -> str:
    """The custom resource that only device `device`'s node offers (DEVICE_SLOTS units; an actor takes one)."""
    return f"wdmoe_device_{device}"


@dataclass(frozen=True)
class RayOptions:
    """How the BS reaches the devices.

    Attributes:
        address: "HOST:PORT" of a running cluster's head (`ray start --head`); None starts a local one-node
            cluster that offers every device's resource.
        token_file: the cluster's token (mode 0600, owned by the user); None: Ray's default ~/.ray/auth_token,
            created (mode 0600) if missing.
        object_store_mb: object store of a local cluster, in MiB.
        num_cpus: CPUs of a local cluster (None: all).
    """

    address: str | None = None
    token_file: Path | None = None
    object_store_mb: int = 200
    num_cpus: int | None = None


def check_token_file(path: Path) -> Path:
    """`path` after checking that it holds a token and that only its owner can read or write it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"token file {path} does not exist; create one with `wdmoe device token {path}` and copy it to every node"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"token file {path} has mode {mode:04o}: group or others may read or change it; run chmod 600 {path}"
        )
    if not path.read_text().strip():
        raise ValueError(f"token file {path} is empty; create one with `wdmoe device token {path}`")
    return path


def write_token_file(path: Path) -> Path:
    """A new random 256-bit token in `path`, readable by its owner only (refuses to overwrite a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def auth_env(token_file: Path | None) -> dict[str, str]:
    """The environment that turns token authentication on with the token of `token_file`."""
    env = {AUTH_MODE_ENV: "token"}
    if token_file is not None:
        env[TOKEN_PATH_ENV] = str(check_token_file(token_file).resolve())
    return env


def enable_auth(token_file: Path) -> None:
    """Turn token authentication on in this process (and the Ray processes it starts), with `token_file`."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    os.environ.update(auth_env(token_file))  # Ray reads these from the environment only
    # Ray caches its config and token when it is imported; reload both, as Ray's own `ray start` does
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Refuse, within `timeout_s`, an address where no head listens: Ray itself retries such an address for about
    12 minutes (20 attempts of ~36 s) before it gives up."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise WdmoeError(f"--ray-address {address!r} is not HOST:PORT; give the address `ray start --head` printed, "
                         "e.g. 10.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ClusterUnreachable(
            f"--ray-address {address}: no Ray head answers there ({why}, tried for up to {timeout_s:g} s); start it "
            f"on the BS with `ray start --head --port {port}`, or fix the address"
        ) from exc


def connect(options: RayOptions, num_devices: int) -> None:
    """Join the cluster at `options.address` (refused at once where nothing listens), or start a local one that
    offers all `num_devices` devices."""
    import ray

    if options.address is not None and options.address != "auto":
        check_reachable(options.address)
    if ray.is_initialized():
        return
    token_file = options.token_file
    if token_file is None:
        token_file = DEFAULT_TOKEN_FILE if DEFAULT_TOKEN_FILE.is_file() else write_token_file(DEFAULT_TOKEN_FILE)
    enable_auth(token_file)
    if options.address is not None:
        os.environ.setdefault(GCS_ATTEMPTS_ENV, str(GCS_ATTEMPTS))
        try:
            ray.init(address=options.address, namespace=NAMESPACE, log_to_driver=False)
        except ConnectionError as exc:  # something listens there, but no GCS answered within the attempts
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClusterUnreachable(
                f"--ray-address {options.address}: a port that answers but no Ray head within "
                f"{os.environ[GCS_ATTEMPTS_ENV]} attempts ({why}); give the head's GCS port (the address "
                "`ray start --head` printed)"
            ) from exc
        return
    os.environ.setdefault(METRICS_ENV, "0")  # read by the Ray processes this starts
    ray.init(
        address="local",  # a new cluster, even where another one already runs on this machine
        num_cpus=options.num_cpus,
        resources={device_resource(d): float(DEVICE_SLOTS) for d in range(num_devices)},
        object_store_memory=options.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=False,
    )


def device_node_command(
    address: str, device: int, num_cpus: int | None = None, object_store_mb: int = 200, block: bool = True
) -> list[str]:
    """The `ray start` command line that joins `address` as device `device`'s node."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray") or "ray"
    cmd = [
        ray_bin, "start", f"--address={address}", f"--resources={json.dumps({device_resource(device): DEVICE_SLOTS})}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}", "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if block:
        cmd.append("--block")
    return cmd


def device_node_env(
    token_file: Path | None, split_dir: Path | None, direct_ports: str | None = None
) -> dict[str, str]:
    """The environment of a device node: this process's, token authentication on, Ray's unauthenticated metrics
    exporter off (unless this environment sets it), the local split dir, and the ports its direct sockets may use
    (checked here, so that a malformed range stops `wdmoe device start`)."""
    from wdmoe.backends.direct import DIRECT_PORTS_ENV, parse_ports

    env = {METRICS_ENV: "0", **os.environ, **auth_env(token_file)}
    if split_dir is not None:
        env[SPLIT_DIR_ENV] = str(split_dir.resolve())
    if direct_ports is not None:
        parse_ports(direct_ports)
        env[DIRECT_PORTS_ENV] = direct_ports.strip()
    return env
