"""Connection stores. ``open_store(url)`` picks the backend named by ``CONNECTIONS_STORE``."""
