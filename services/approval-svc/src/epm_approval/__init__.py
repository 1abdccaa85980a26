"""epm_approval."""
