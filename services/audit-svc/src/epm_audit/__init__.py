"""epm_audit."""
