"""epm_gateway."""
