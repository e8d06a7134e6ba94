"""Deployment tooling: packaging, resources and IAM policies (never shipped to Lambda)."""
