"""epm_request."""
