"""The HTTP API (``sluicegate serve``) and its Python client.

The server needs the ``http`` extra (FastAPI, uvicorn, prometheus-client);
the client needs httpx. Import :mod:`sluicegate.http.api` or
:mod:`sluicegate.http.client` directly; this package imports neither, so
that importing it costs nothing.
"""
