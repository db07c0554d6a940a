"""Adapters: the only modules importing boto3; they return domain models, raise broker errors."""
