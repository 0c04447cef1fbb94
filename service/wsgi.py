"""WSGI entry point for gunicorn: ``gunicorn 'fedcompute.service.wsgi:app'``."""

from .app import create_app

app = create_app()
