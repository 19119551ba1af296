"""The API token: one secret shared by every controller, created at cluster initialisation; ctrl.db keeps its hash."""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any

from hactl._fs import atomic_write

log = logging.getLogger("hactl.server")


class TokenError(Exception):
    pass


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(cluster_info: dict[str, Any] | None, token: str) -> bool:
    """Constant-time comparison of ``token`` with the hash in ctrl.db's cluster record (Cluster.check_token: the
    controller's and its API workers'). Raises ClusterUnavailable while there is no record (not initialised)."""
    from hactl.api.cluster import ClusterUnavailable  # (the API imports nothing of the server: import here)
    if cluster_info is None:  # nothing to check against yet: "retry soon", not "wrong token"
        raise ClusterUnavailable("the cluster is not initialised yet", retry_after=1)
    expected = cluster_info.get("token_hash")
    if not expected or not isinstance(token, str):
        hmac.compare_digest("x", "y")  # same work either way
        return False
    return hmac.compare_digest(token_hash(token).encode(), str(expected).encode())


def read_or_create_token(path: str) -> str:
    """The token in ``path``; created (mode 0600, durably) if missing. Never replaces a token another node wrote
    meanwhile: the first writer wins and everyone reads its token."""
    p = Path(path)
    try:
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(p, secrets.token_urlsafe(32) + "\n", 0o600, overwrite=False)
            log.info("created the API token file %s", p)
        except FileExistsError:
            pass
        token = p.read_text(encoding="utf-8").strip()
    if not token:
        raise TokenError(f"{path}: the API token file is empty")
    return token
