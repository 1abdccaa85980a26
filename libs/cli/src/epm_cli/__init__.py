"""epm_cli."""
