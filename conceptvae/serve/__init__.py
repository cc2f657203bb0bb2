"""``conceptvae serve``: edit faces in the browser, or over HTTP.

``create_app(run)`` returns a FastAPI application (the page at ``/``, the API under ``/api``,
OpenAPI docs at ``/docs``); ``conceptvae serve`` runs it with uvicorn. See docs/serve.md.
"""

from __future__ import annotations

from conceptvae.serve.app import DEFAULT_RUN, EditorService, ServeError, ServeLimits, create_app

__all__ = ["DEFAULT_RUN", "EditorService", "ServeError", "ServeLimits", "create_app"]
