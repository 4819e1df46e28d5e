"""A tracking URI's user and password (http://alice:s3cret@host) moved to MLflow's own variables before Hydra or
MLflow sees the URI (it is logged, printed, put in Hydra's files), and redacted; standard library only: train.py."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

# scheme://user[:password]@ ; it ends at the authority's last '@' (a raw '@' in a password included)
USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/?#\s'\":]*)(?::(?P<password>[^/?#\s'\"]*))?@"
)
URI_VARIABLE = "MLFLOW_TRACKING_URI"


def redact(text: str) -> str:
    """Every password in URIs within `text` replaced by ***; the user is kept, as it names the account."""
    return USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}{'' if m['password'] is None else ':***'}@", text)


def has_password(uri: str) -> bool:
    return any(match["password"] is not None for match in USERINFO.finditer(uri))


def move_out_of_uri(uri: str) -> str:
    """An http(s) URI without its user and password, moved to this process's MLFLOW_TRACKING_USERNAME/PASSWORD."""
    match = USERINFO.search(uri)
    if match is None or match["scheme"].lower() not in ("http://", "https://"):
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(match["user"])
    if match["password"] is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(match["password"])
    return uri[: match.start()] + match["scheme"] + uri[match.end() :]


def move_out_of_variable() -> None:
    """$MLFLOW_TRACKING_URI (the config's default tracking URI) without its credentials."""
    if URI_VARIABLE in os.environ:
        os.environ[URI_VARIABLE] = move_out_of_uri(os.environ[URI_VARIABLE])


def move_out_of_overrides(args: list[str]) -> list[str]:
    """train.py's arguments with the credentials of mlflow.tracking_uri=... (and $MLFLOW_TRACKING_URI's) moved."""
    move_out_of_variable()
    return [move_out_of_uri(arg) if arg.lstrip("+~").startswith("mlflow.tracking_uri=") else arg for arg in args]
