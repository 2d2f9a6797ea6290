"""tokend: keeps OAuth 2.0 client_credentials tokens fresh in files for services."""

__version__ = "0.1.0"
