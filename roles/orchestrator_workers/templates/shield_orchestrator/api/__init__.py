"""The HTTP API: the FastAPI app, its routers (routes/), request and response
schemas, errors in one JSON shape, the token check and the body limits, and the
operator's console (static/)."""
