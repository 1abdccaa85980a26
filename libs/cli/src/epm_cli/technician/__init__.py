"""The technician/operator commands of ``epm``, over the gateway's HTTP API."""
