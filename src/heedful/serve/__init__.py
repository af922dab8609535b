"""``heedful serve``: trained runs behind an HTTP API (FastAPI on uvicorn, extra ``heedful[serve]``).
fastapi and uvicorn are imported only when an app is made, so this package imports on a bare install."""

from heedful.serve.app import Batching, Limits, create_app, is_local, load_app, serve

__all__ = ["Batching", "Limits", "create_app", "is_local", "load_app", "serve"]
