"""The HTTP API: a Powertools REST resolver behind API Gateway (IAM auth)."""
