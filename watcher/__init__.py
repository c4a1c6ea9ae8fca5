"""watcher: continuous deployment for Django sites under Supervisord."""

__version__ = "0.1.0"
