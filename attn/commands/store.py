"""The ``--tracking-uri`` of the commands that read runs back (eval, show, curves), resolved and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from attn.errors import TrackingError
from attn.tracking import check_reachable, resolve_tracking_uri


def checked_store(tracking_uri: Optional[str], must_exist: bool) -> str:
    """The resolved URI (``$MLFLOW_TRACKING_URI``, else ./mlflow.db, when None): a server must answer;
    with ``must_exist`` a sqlite store must already be there (reading from nothing is a mistake)."""
    uri = resolve_tracking_uri(tracking_uri)
    db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if must_exist and db is not None and not Path(db).is_file():
        raise TrackingError(f"{db}: no MLflow store there; pass --tracking-uri (a server URL or sqlite:///path/mlflow.db)")
    check_reachable(uri)
    return uri
