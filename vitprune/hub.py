"""Is the Hugging Face hub worth trying? A torch-free probe shared by the data and model loaders
(the `data` command line must not import torch)."""

from __future__ import annotations

import os
import socket

OFFLINE_TRUE = ("1", "on", "yes", "true")


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0,
                  offline_env: tuple[str, ...] = ("HF_HUB_OFFLINE",)) -> bool:
    """True if loading from the Hugging Face hub is worth trying: a TCP connection to `host`:443
    opens within `timeout` seconds, or one of `offline_env` is set (the user asked for the local
    cache: the library looks there), or an HTTPS/ALL proxy is configured (a direct connection
    proves nothing; the library goes through the proxy). A quick probe so an offline machine
    fails in seconds instead of ~25 s of retries."""
    if any(os.environ.get(v, "").strip().lower() in OFFLINE_TRUE for v in offline_env):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
