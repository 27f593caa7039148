"""Deployment checks: images, compose file, Helm chart, docs site."""
