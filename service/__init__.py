"""The fedcompute cloud service: Flask API, RQ background work, Redis storage."""
