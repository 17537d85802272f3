"""Joining a Ray cluster, or starting a local one, for ``serve`` and ``scan``."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket


class ScaleError(Exception):
    """Ray is missing or cannot be reached (one-line message)."""


def require_ray():
    """Import ray, or say how to install it."""
    try:
        import ray
    except ImportError:
        raise ScaleError("this command needs Ray: pip install 'ringmark[scale]'") from None
    return ray


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else RAY_ADDRESS (ignored when set but empty); None: a
    local Ray on this machine. The environment is read, not changed."""
    return address or os.environ.get("RAY_ADDRESS", "").strip() or None


def connect(address: str | None = None, num_cpus: int | None = None, log_level: str = "error"):
    """Join the cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``; default: the
    one in RAY_ADDRESS), else start a local Ray on this machine's CPUs (``num_cpus``: fewer).
    Does nothing when this process is already connected. Returns the ``ray`` module. ``log_level``:
    what of Ray's own logging reaches stderr (``choices.RAY_LOG_LEVELS``; its workers' output from "info")."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = cluster_address(address)
    if not address:
        # Serve's proxy must answer its readiness check in 5 s by default, which a busy 2-core
        # machine misses (the server then never starts); the local Ray's processes inherit this
        # process's environment, so a longer wait is set here unless the user chose one.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    try:
        # "local": a new Ray here, whatever RAY_ADDRESS holds (ray.init reads it when address is None)
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                 logging_level=getattr(logging, log_level.upper()), log_to_driver=log_level in ("info", "debug"))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ScaleError(f"cannot {'join the Ray cluster at ' + address if address else 'start a local Ray'}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray


def default_gpus(resources: dict, device: str) -> float:
    """GPUs per worker or replica when the user names none: 1 where the cluster (its
    ``ray.cluster_resources()``) has GPUs and ``device`` allows them, else 0."""
    return 1.0 if device != "cpu" and resources.get("GPU", 0) >= 1 else 0.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Raise ValueError when a server on ``host`` would answer other machines without a token."""
    if token is not None and not token.strip():
        raise ValueError("the token is empty")
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from other machines: give a token with --token-file FILE "
                         f"or RINGMARK_TOKEN (an open verifier lets anyone probe and strip watermarks)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Raise ValueError when this machine cannot listen on (host, port): Ray Serve's proxy would
    retry binding it for ever instead of failing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
