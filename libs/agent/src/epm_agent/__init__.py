"""epm_agent."""
