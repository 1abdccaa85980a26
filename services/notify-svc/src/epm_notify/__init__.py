"""epm_notify."""
