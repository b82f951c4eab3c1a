"""HTTP: the FastAPI application, its routes, templates and browser code."""
